#!/usr/bin/env node
// The deployment guide's load shapes, at full size, against the Express example with a real
// 3-node Patroni lab (synchronous_mode) and Redis behind it, all on this machine:
//   stages  ramp to LOAD_USERS (10,000) concurrent users over 120 s, hold 180 s; the primary
//           is killed (kill -9) 30 s into the hold and Redis paused (SIGSTOP) for 15 s at 100 s
//   spike   LOAD_USERS/10 users throughout, plus sudden bursts of 0.9 x LOAD_USERS at 30-60 s
//           and 90-120 s
//   stress  think 1 s; LOAD_USERS/10 more users every 20 s up to 2 x LOAD_USERS: the knee is
//           the last step whose served rate still follows the offered rate with p99 < 1 s
//   soak    LOAD_USERS for 30 minutes
// Users keep their connection and think between requests (LOAD_THINK_MS, 3,000 ms mean; the
// demo's L1-hit-heavy mix, see driver.mjs). The load generator is autocannon 8, in a process
// of its own.
//
//   npm run bench:load                       (every shape: about 50 minutes; not part of npm test)
//   node bench/load/load.mjs stages          (one shape; needs `npm run build`)
//   LOAD_USERS=1000 LOAD_TIME_SCALE=0.2 node bench/load/load.mjs stages   (a short run)
//   node bench/load/load.mjs --report stages spike   (rewrite the RESULTS.md section and the
//                                                    charts from bench/out/load-<shape>.json)
//
// Environment: LOAD_USERS (10000), LOAD_THINK_MS (3000), LOAD_TIME_SCALE (1: multiplies every
// duration), LOAD_TIMEOUT_S (30, failover.timeoutMs: a request not answered by then is an error), LOAD_PROFILE
// (1: --cpu-prof on the service; 0 for none), LOAD_PG_POOL_MAX (the example's PG_POOL_MAX,
// connections per member; unset: the router's default, 10), LOAD_EXAMPLE (examples/express-library).
// Writes bench/out/load-<shape>.json, bench/load/results/<shape>.svg and the load section of
// bench/RESULTS.md. Raise the open-files limit first (scripts/bench-load.sh does): every user
// is a socket on both ends.
import { fork } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { applySchema, importLab, percentile, renderTimeline, svgToPng } from '../../scripts/demo.mjs'
import { LOAD_END, LOAD_START } from '../run-all.mjs'
import { processSample, profileBreakdown, readProfile, startService } from './service.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const ROOT = join(HERE, '..', '..')
const OUT = join(HERE, '..', 'out')
const CHARTS = join(HERE, 'results')
const RESULTS = join(HERE, '..', 'RESULTS.md')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The guide's figures at 10,000 concurrent users (multi-pod deployment). */
export const GUIDE = { users: 10_000, errorRate: 0, p50: 1500, p95: 4800, p99: 6600, rps: 1219 }

function envNum(name, dflt) {
  const v = process.env[name]
  const n = v === undefined || v === '' ? dflt : Number(v)
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`)
  return n
}

/** This process's soft limit on open files (children inherit it). */
export function openFilesLimit() {
  const m = /Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'))
  return m ? Number(m[1]) : 1024
}

/** The plan of each shape: user groups (autocannon instances), faults, think time, windows. */
export function shape(name, { users, scale, thinkMs }) {
  const s = (x) => Math.max(1, Math.round(x * scale))
  switch (name) {
    case 'stages': {
      const ramp = s(120)
      const hold = s(180)
      // Groups of at most 250 users, evenly spread over the ramp: autocannon opens a group's
      // connections all at once, and 500 at once overflow a default listen backlog (511).
      const steps = Math.max(1, Math.ceil(users / 250))
      const groups = Array.from({ length: steps }, (_, i) => ({
        users: Math.round(users / steps),
        startS: (i * ramp) / steps,
        stopS: ramp + hold,
      }))
      return {
        groups,
        thinkMs,
        faults: [
          { atS: ramp + s(30), kind: 'kill-primary' },
          { atS: ramp + s(100), kind: 'pause-redis', forS: s(15) },
        ],
        // The guide's table is about the plateau: every user connected.
        window: { fromS: ramp, toS: ramp + hold },
      }
    }
    case 'spike': {
      const base = Math.round(users / 10)
      // Each burst: 0.9 x users within one second, in groups of 500 (a burst of connections
      // is what a spike is; one SYN flood of 9,000 in a millisecond is another test).
      const parts = Math.max(1, Math.ceil((users - base) / 500))
      const burst = (fromS, toS) =>
        Array.from({ length: parts }, (_, i) => ({
          users: Math.round((users - base) / parts),
          startS: fromS + i / parts,
          stopS: toS,
        }))
      return {
        groups: [{ users: base, startS: 0, stopS: s(150) }, ...burst(s(30), s(60)), ...burst(s(90), s(120))],
        thinkMs,
        faults: [],
        window: { fromS: 0, toS: s(150) },
      }
    }
    case 'stress': {
      const step = Math.round(users / 10)
      const every = s(20)
      // Up to twice the users, or as many as the open-files limit allows (each user is a socket
      // in the service and in the load generator).
      const steps = Math.max(1, Math.min(20, Math.floor((openFilesLimit() - 1000) / step)))
      return {
        groups: Array.from({ length: steps }, (_, i) => ({
          users: step,
          startS: i * every,
          stopS: steps * every,
        })),
        thinkMs: Math.min(thinkMs, 1000),
        faults: [],
        steps: Array.from({ length: steps }, (_, i) => ({
          users: step * (i + 1),
          fromS: i * every,
          toS: (i + 1) * every,
        })),
        window: { fromS: 0, toS: steps * every },
        // Stop once the service is clearly broken: 5 s in a row with more than 20% errors.
        breakAt: { errorRate: 0.2, seconds: 5 },
      }
    }
    case 'soak': {
      // Connected over the first minute in groups of 250 (as stages does), measured after it.
      const steps = Math.max(1, Math.ceil(users / 250))
      return {
        groups: Array.from({ length: steps }, (_, i) => ({
          users: Math.round(users / steps),
          startS: (i * s(60)) / steps,
          stopS: s(1800),
        })),
        thinkMs,
        faults: [],
        window: { fromS: s(60), toS: s(1800) },
      }
    }
    default:
      throw new Error(`unknown shape ${name} (stages, spike, stress, soak)`)
  }
}

/** The most users connected at once (groups may not overlap: the spike's bursts). */
export function peakUsers(groups) {
  return Math.max(
    ...groups.map((g) =>
      groups.filter((h) => h.startS <= g.startS && h.stopS > g.startS).reduce((a, h) => a + h.users, 0),
    ),
  )
}

/** Latency percentiles (ms) and counts over the seconds [fromS, toS). */
export function summarize(seconds, fromS, toS) {
  const inside = seconds.filter((b) => b.t > fromS && b.t <= toS)
  const lat = new Float64Array(inside.reduce((a, b) => a + b.lat.length, 0))
  let k = 0
  for (const b of inside) for (const v of b.lat) lat[k++] = v / 10
  lat.sort()
  const ok = inside.reduce((a, b) => a + b.ok, 0)
  const errors = {}
  for (const b of inside)
    for (const [type, n] of Object.entries(b.errors)) errors[type] = (errors[type] ?? 0) + n
  const failed = Object.values(errors).reduce((a, n) => a + n, 0)
  const span = Math.max(1, inside.length)
  const byKind = {}
  for (const kind of ['read', 'ryw', 'write']) {
    const all = inside.flatMap((b) => b.byKind?.[kind] ?? []).sort((x, y) => x - y)
    byKind[kind] = { n: all.length, p50: percentile(all, 50) / 10, p99: percentile(all, 99) / 10 }
  }
  return {
    fromS,
    toS,
    requests: ok + failed,
    ok,
    errors,
    errorRate: ok + failed > 0 ? failed / (ok + failed) : 0,
    unknownOutcomes: errors['503 E_COMMIT_UNKNOWN'] ?? 0,
    p50: percentile(lat, 50),
    p95: percentile(lat, 95),
    p99: percentile(lat, 99),
    max: lat.length > 0 ? lat[lat.length - 1] : Number.NaN,
    rps: (ok + failed) / span,
    users: Math.max(0, ...inside.map((b) => b.users)),
    byKind,
  }
}

/** Stress: per step, offered (users / mean cycle) against served; the knee is the last good step. */
export function knee(seconds, steps, thinkMs) {
  const rows = steps.map((st) => {
    // Skip the first 5 s of a step: its new users are still starting.
    const sum = summarize(seconds, st.fromS + Math.min(5, (st.toS - st.fromS) / 4), st.toS)
    const offered = st.users / ((thinkMs + (Number.isFinite(sum.p50) ? sum.p50 : 0)) / 1000)
    return { ...sum, users: st.users, offered }
  })
  // The knee: the last step that met the bar before the service broke (two steps in a row
  // below it; one bad step alone can be a hiccup of a shared machine).
  let kneeRow
  let misses = 0
  for (const r of rows) {
    if (r.requests === 0) break
    const follows = r.rps >= 0.9 * r.offered && r.p99 < 1000 && r.errorRate < 0.001
    if (follows) {
      kneeRow = r
      misses = 0
    } else if (++misses >= 2) break
  }
  return { rows, knee: kneeRow }
}

function fmt(ms) {
  if (!Number.isFinite(ms)) return '-'
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)} ms`
}
const pct = (x) => `${(100 * x).toFixed(x < 0.001 && x > 0 ? 3 : 2)} %`

async function runShape(name, opts) {
  const plan = shape(name, opts)
  const { startLab } = await importLab()
  console.log(`\n== ${name}: starting the lab (3 Patroni members, synchronous_mode, etcd, Redis)`)
  const lab = await startLab({ nodes: 3, synchronousMode: true, redis: true })
  const profileDir = mkdtempSync(join(tmpdir(), 'resilient-load-prof-'))
  let service
  let driver
  const onSignal = () => {
    driver?.kill('SIGKILL')
    service?.stop().finally(() => lab.down().finally(() => process.exit(130)))
  }
  process.once('SIGINT', onSignal)
  try {
    await lab.waitForReplicas(2)
    await applySchema(lab, opts.exampleDir)
    const authors = (await lab.sql('SELECT DISTINCT author FROM books ORDER BY 1')).map((r) => r[0])
    service = await startService(lab, {
      exampleDir: opts.exampleDir,
      env: opts.poolMax ? { PG_POOL_MAX: String(opts.poolMax) } : {},
      nodeOptions: opts.profile
        ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=2000']
        : [],
    })
    const peak = peakUsers(plan.groups)
    const endS = Math.max(...plan.groups.map((g) => g.stopS))
    console.log(
      `service at ${service.url} (pid ${service.pid}); ${peak} users at most, think ${plan.thinkMs} ms, ${endS} s`,
    )

    const seconds = []
    const samples = []
    const events = []
    let broken = 0
    driver = fork(join(HERE, 'driver.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const finished = new Promise((resolve, reject) => {
      driver.on('message', (m) => {
        if (m.error) return reject(new Error(`driver: ${m.error}`))
        if (m.done) return resolve(m)
        seconds.push(m)
        const failed = Object.values(m.errors).reduce((a, n) => a + n, 0)
        const all = m.ok + failed
        if (plan.breakAt && all > 0 && failed / all > plan.breakAt.errorRate) {
          if (++broken >= plan.breakAt.seconds) {
            events.push({ t: m.t * 1000, label: 'broken: stopped', color: '#d62728' })
            driver.kill('SIGTERM')
            resolve({ stoppedEarly: true })
          }
        } else broken = 0
        const lat = [...m.lat].sort((a, b) => a - b)
        const s = processSample(service.pid)
        const d = processSample(driver.pid)
        samples.push({ t: m.t, service: s, driver: d, load1: loadavg()[0] })
        if (m.t % 10 === 0) {
          console.log(
            `t=${String(m.t).padStart(4)}s users=${String(m.users).padStart(6)} rps=${String(all).padStart(5)} errors=${String(failed).padStart(4)} p99=${fmt(percentile(lat, 99) / 10).padStart(8)} cpu(service)=${samples.length > 1 && s && samples.at(-2).service ? ((s.cpuS - samples.at(-2).service.cpuS) * 100).toFixed(0) : '-'}% rss=${s ? s.rssMiB.toFixed(0) : '-'} MiB load=${loadavg()[0].toFixed(1)}`,
          )
        }
      })
      driver.once('exit', (code) => (code ? reject(new Error(`driver exited ${code}`)) : resolve({})))
    })
    driver.send({
      url: service.url,
      groups: plan.groups,
      thinkMs: plan.thinkMs,
      timeoutS: opts.timeoutS,
      bookCount: 400,
      authors,
    })
    const t0 = Date.now()
    const at = async (s) => {
      const wait = s * 1000 - (Date.now() - t0)
      if (wait > 0) await sleep(wait)
    }
    const faults = (async () => {
      for (const f of plan.faults) {
        await at(f.atS)
        if (f.kind === 'kill-primary') {
          await lab.waitForSyncStandby({ maxLagBytes: 1_048_576 })
          const t = Date.now() - t0
          const old = await lab.killPrimary({ waitForSync: false })
          events.push({ t, label: `kill -9 primary (${old})`, color: '#d62728' })
          console.log(`-- kill -9 of the primary ${old}`)
          lab
            .waitForPrimary({ not: old, timeoutMs: 60_000 })
            .then((p) => events.push({ t: Date.now() - t0, label: `new leader ${p.name}`, color: '#ff7f0e' }))
            .catch(() => {})
        } else if (f.kind === 'pause-redis') {
          events.push({ t: Date.now() - t0, label: 'Redis paused (SIGSTOP)', color: '#8c564b' })
          await lab.pauseRedis()
          console.log('-- Redis paused')
          await sleep(f.forS * 1000)
          await lab.resumeRedis()
          events.push({ t: Date.now() - t0, label: 'Redis resumed', color: '#17becf' })
          console.log('-- Redis resumed')
        }
      }
    })()
    const end = await finished
    await faults.catch((err) => console.error('fault injection:', err.message))
    if (end.lat) seconds.push({ ...end, t: Math.ceil(end.t), users: 0 })
    const serviceLog = service.log()
    await service.stop()
    const profile = opts.profile ? readProfile(profileDir) : undefined

    // Figures.
    const window = summarize(seconds, plan.window.fromS, plan.window.toS)
    const whole = summarize(seconds, 0, Number.POSITIVE_INFINITY)
    const inWindow = samples.filter((x) => x.t > plan.window.fromS && x.t <= plan.window.toS && x.service)
    const cpu =
      inWindow.length > 1
        ? (inWindow.at(-1).service.cpuS - inWindow[0].service.cpuS) / (inWindow.at(-1).t - inWindow[0].t)
        : Number.NaN
    const driverCpu =
      inWindow.length > 1 && inWindow[0].driver && inWindow.at(-1).driver
        ? (inWindow.at(-1).driver.cpuS - inWindow[0].driver.cpuS) / (inWindow.at(-1).t - inWindow[0].t)
        : Number.NaN
    const rss = inWindow.map((x) => x.service.rssMiB)
    const report = {
      shape: name,
      date: new Date().toISOString(),
      users: peak,
      thinkMs: plan.thinkMs,
      timeScale: opts.scale,
      window,
      whole,
      service: {
        cpuCores: cpu,
        rssMiB: { start: rss[0], end: rss.at(-1), max: Math.max(...rss) },
        profile: profile ? profileBreakdown(profile) : undefined,
      },
      driverCpuCores: driverCpu,
      loadAverage: {
        mean: inWindow.length ? inWindow.reduce((a, x) => a + x.load1, 0) / inWindow.length : Number.NaN,
        max: Math.max(...samples.map((x) => x.load1)),
      },
      events: events.map((e) => ({ t: +(e.t / 1000).toFixed(1), label: e.label })),
      stoppedEarly: Boolean(end.stoppedEarly),
      stress: plan.steps ? knee(seconds, plan.steps, plan.thinkMs) : undefined,
      seconds: seconds.map((b) => {
        const lat = [...b.lat].sort((x, y) => x - y)
        const failed = Object.values(b.errors).reduce((a, n) => a + n, 0)
        return {
          t: b.t,
          users: b.users,
          ok: b.ok,
          errors: failed,
          p50: percentile(lat, 50) / 10,
          p99: percentile(lat, 99) / 10,
        }
      }),
    }
    if (window.errorRate > 0.01) report.serviceLogTail = serviceLog.slice(-3000)
    mkdirSync(OUT, { recursive: true })
    writeFileSync(join(OUT, `load-${name}.json`), `${JSON.stringify(report, null, 2)}\n`)
    writeChart(report, plan.window)
    return report
  } finally {
    process.off('SIGINT', onSignal)
    driver?.kill('SIGKILL')
    await service?.stop().catch(() => {})
    await lab.down().catch((err) => console.error('lab teardown:', err.message))
    rmSync(profileDir, { recursive: true, force: true })
  }
}

const EVENT_COLORS = { kill: '#d62728', leader: '#ff7f0e', paused: '#8c564b', resumed: '#17becf' }

/** bench/load/results/<shape>.svg (and .png with rsvg-convert) from a report. */
export function writeChart(report, window = report.window) {
  mkdirSync(CHARTS, { recursive: true })
  const color = (label) => Object.entries(EVENT_COLORS).find(([k]) => label.includes(k))?.[1] ?? '#444'
  const svg = renderTimeline({
    buckets: report.seconds,
    events: [...report.events]
      .sort((a, b) => a.t - b.t)
      .map((e) => ({ t: e.t * 1000, label: e.label, color: color(e.label) })),
    title: `bench/load ${report.shape}: Express example, 3-node Patroni (sync) + Redis, ${report.users} users, think ${report.thinkMs} ms (${report.date.slice(0, 10)})`,
    phases: [
      { from: 0, to: window.fromS * 1000 },
      { from: window.fromS * 1000, to: window.toS * 1000 },
    ],
    rightAxis: { key: 'users', label: 'concurrent users' },
  })
  writeFileSync(join(CHARTS, `${report.shape}.svg`), svg)
  svgToPng(join(CHARTS, `${report.shape}.svg`))
}

/** The markdown of one shape: the guide's table beside ours, then the details. */
export function renderShape(r) {
  const w = r.window
  const lines = []
  lines.push(`### ${r.shape} (${r.date.slice(0, 16).replace('T', ' ')} UTC)`)
  lines.push('')
  const scaled = r.timeScale !== 1 ? `, durations x${r.timeScale} (a short run)` : ''
  lines.push(
    `${r.users} users at most, think ${r.thinkMs} ms${scaled}; window ${w.fromS}-${w.toS} s; load average ${r.loadAverage.mean.toFixed(1)} (max ${r.loadAverage.max.toFixed(1)}) on 2 cores.` +
      (r.stoppedEarly ? ' Stopped early: the service was broken (over 20 % errors for 5 s).' : ''),
  )
  lines.push('')
  lines.push(
    '| | users | error rate | p50 | p95 | p99 | requests/s | service CPU | service RSS | CPU in @resilient/* |',
  )
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  lines.push(
    `| the guide (multi-pod) | ${GUIDE.users} | 0 % | ${fmt(GUIDE.p50)} | ${fmt(GUIDE.p95)} | ${fmt(GUIDE.p99)} | ${GUIDE.rps} | - | - | - |`,
  )
  const p = r.service.profile
  lines.push(
    `| ours, ${r.shape} | ${w.users} | ${pct(w.errorRate)} | ${fmt(w.p50)} | ${fmt(w.p95)} | ${fmt(w.p99)} | ${w.rps.toFixed(0)} | ${(100 * r.service.cpuCores).toFixed(0)} % of a core | ${r.service.rssMiB.max?.toFixed(0)} MiB max | ${p ? pct(p.resilientShare) : '-'} |`,
  )
  lines.push('')
  const errs = Object.entries(w.errors)
  lines.push(
    `Errors in the window: ${errs.length === 0 ? 'none' : errs.map(([k, v]) => `${k}: ${v}`).join(', ')} (${w.unknownOutcomes} of them outcome-unknown, E_COMMIT_UNKNOWN). ` +
      `Max latency ${fmt(w.max)}. Load generator: ${(100 * r.driverCpuCores).toFixed(0)} % of a core.`,
  )
  if (w.byKind) {
    const k = w.byKind
    lines.push(
      `By kind (p50 / p99): cached reads ${fmt(k.read.p50)} / ${fmt(k.read.p99)} (${k.read.n}), ` +
        `read-your-writes reads ${fmt(k.ryw.p50)} / ${fmt(k.ryw.p99)} (${k.ryw.n}), ` +
        `loans and returns ${fmt(k.write.p50)} / ${fmt(k.write.p99)} (${k.write.n}).`,
    )
  }
  if (r.events.length) lines.push(`Events: ${r.events.map((e) => `${e.t} s ${e.label}`).join('; ')}.`)
  if (p) {
    lines.push(
      `Service CPU profile (--cpu-prof, non-idle ${p.busyMs} ms): @resilient/* ${pct(p.resilientShare)}, Node's own modules and native code ${pct(p.nodeShare)}; the largest: ${p.top
        .slice(0, 12)
        .map((x) => `${x.category} ${pct(x.share)}`)
        .join(', ')}.`,
    )
  }
  if (r.stress) {
    lines.push('')
    lines.push('| users | offered req/s | served req/s | p50 | p99 | error rate |')
    lines.push('|---:|---:|---:|---:|---:|---:|')
    for (const row of r.stress.rows.filter((x) => x.requests > 0)) {
      lines.push(
        `| ${row.users} | ${row.offered.toFixed(0)} | ${row.rps.toFixed(0)} | ${fmt(row.p50)} | ${fmt(row.p99)} | ${pct(row.errorRate)} |`,
      )
    }
    lines.push('')
    const k = r.stress.knee
    lines.push(
      k
        ? `**Knee: ${k.users} users, ${k.rps.toFixed(0)} requests/s served** (the last step that served at least 90 % of its offered rate with p99 under 1 s and under 0.1 % errors, before two steps in a row did not).`
        : 'No step met the bar (90 % of the offered rate served, p99 under 1 s, under 0.1 % errors).',
    )
  }
  lines.push('')
  lines.push(`![${r.shape}](load/results/${r.shape}.svg)`)
  return lines.join('\n')
}

function writeResults(reports, command) {
  const prev = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : '# Benchmark results\n'
  const body = [
    LOAD_START,
    '## Load shapes: bench/load/load.mjs',
    '',
    `\`${command}\` (the Express example with a 3-node Patroni lab in synchronous_mode and Redis, all on this 2-core machine; autocannon 8 users that keep their connection and think between requests, the demo's L1-hit-heavy mix: per cycle 13 GET /books/:id, 3 GET /books?author=, a loan, its read-your-writes read and its return). ` +
      "The guide's row is the original deployment guide's 10,000-user test on a multi-pod deployment. Latency is per request, from autocannon; CPU and memory from /proc of the service's process; the @resilient/* share is self time in the packages' code over the profile's non-idle time.",
    '',
    'How the service is driven: only through its HTTP interface, its environment (PATRONI_ENDPOINTS, PG*, REDIS_*, PORT, HOST, ADMIN_PORT, PG_POOL_MAX) and its package.json scripts: `build` when there is one, then `start`, which must be `node <file>` (bench/load/service.mjs). When the example becomes TypeScript (`build`: tsc, `start`: node dist/server.js) nothing here changes, as long as the server still prints `listening on <url>`. ' +
      "Server settings matter: a user thinks up to 1.5 x LOAD_THINK_MS on a kept connection, and the example's server closes idle connections after Node's default keepAliveTimeout of 5 s (above 3.3 s of mean think time users reconnect; a response racing the close is an ECONNRESET); a group of users connects at once, and Node's default listen backlog is 511.",
    '',
    ...(reports.some((r) => r.timeScale !== 1 || r.users < GUIDE.users)
      ? [
          "**These are short runs made while building the harness, on a machine shared with other engineers' test clusters (see each load average): they are not the comparison with the guide.** `npm run bench:load` on a quiet machine writes that.",
          '',
        ]
      : []),
    ...reports.map(renderShape).flatMap((s) => [s, '']),
    LOAD_END,
  ].join('\n')
  const start = prev.indexOf(LOAD_START)
  const end = prev.indexOf(LOAD_END)
  const next =
    start !== -1 && end !== -1
      ? prev.slice(0, start) + body + prev.slice(end + LOAD_END.length)
      : `${prev.trimEnd()}\n\n${body}\n`
  writeFileSync(RESULTS, next)
}

async function main() {
  const names = process.argv.slice(2).filter((a) => !a.startsWith('-'))
  const shapes = names.length > 0 ? names : ['stages', 'spike', 'stress', 'soak']
  const opts = {
    users: envNum('LOAD_USERS', 10_000),
    thinkMs: envNum('LOAD_THINK_MS', 3000),
    scale: envNum('LOAD_TIME_SCALE', 1),
    timeoutS: envNum('LOAD_TIMEOUT_S', 30),
    profile: envNum('LOAD_PROFILE', 1) === 1,
    poolMax: envNum('LOAD_PG_POOL_MAX', 0),
    exampleDir: join(ROOT, process.env.LOAD_EXAMPLE ?? 'examples/express-library'),
  }
  for (const s of shapes) shape(s, opts) // refuse an unknown shape before starting anything
  if (process.argv.includes('--report')) {
    // Rewrite the RESULTS.md section from the last runs' bench/out/load-<shape>.json.
    const reports = shapes.map((s) => JSON.parse(readFileSync(join(OUT, `load-${s}.json`), 'utf8')))
    for (const r of reports) writeChart(r)
    writeResults(reports, reports[0].command ?? `node bench/load/load.mjs ${shapes.join(' ')}`)
    return
  }
  const env = ['LOAD_USERS', 'LOAD_THINK_MS', 'LOAD_TIME_SCALE', 'LOAD_TIMEOUT_S', 'LOAD_PG_POOL_MAX']
    .filter((k) => process.env[k])
    .map((k) => `${k}=${process.env[k]} `)
    .join('')
  const command = `${env}node bench/load/load.mjs ${shapes.join(' ')}`
  const reports = []
  for (const s of shapes) {
    const r = await runShape(s, opts)
    r.command = command
    writeFileSync(join(OUT, `load-${s}.json`), `${JSON.stringify(r, null, 2)}\n`)
    reports.push(r)
    console.log(`\n${renderShape(r)}\n`)
  }
  writeResults(reports, command)
  console.log(`bench/RESULTS.md (load section), bench/out/load-*.json, bench/load/results/*.svg written`)
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
