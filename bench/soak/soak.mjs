#!/usr/bin/env node
// Soak: mixed load through the Express example for SOAK_MS (default 10 minutes), with a
// PostgreSQL primary failover (kill -9) every SOAK_FAILOVER_EVERY_MS (2 minutes) and a Redis
// pause (SIGSTOP, SOAK_PAUSE_MS = 10 s) half-way between two failovers. The killed member
// is started again (and reinitialized if it cannot rejoin) after each failover.
//
//   node bench/soak/soak.mjs                 (needs `npm run build`; not part of CI)
//   SOAK_MS=180000 node bench/soak/soak.mjs  (a 3-minute run)
//
// Reports the app's heap, open handles (process.getActiveResourcesInfo() by type) and pool
// sizes per PostgreSQL member at the start and at the end, errors and recovery per
// failover, and acknowledged writes against rows found. Writes bench/out/soak.json,
// bench/out/soak-timeline.svg and the soak section of bench/RESULTS.md.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  applySchema,
  createLoad,
  importLab,
  perSecond,
  renderTimeline,
  request,
  startApp,
  summarize,
  svgToPng,
  watchForNewLeader,
} from '../../scripts/demo.mjs'
import { rejoin } from '../failover/failover.bench.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const OUT = join(HERE, '..', 'out')
const RESULTS = join(HERE, '..', 'RESULTS.md')
const SOAK_START = '<!-- soak:start -->'
const SOAK_END = '<!-- soak:end -->'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function envInt(name, dflt) {
  const v = process.env[name]
  const n = v === undefined || v === '' ? dflt : Number(v)
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`)
  return n
}

async function stats(url) {
  const res = await request(url, 'GET', '/debug/stats', { timeoutMs: 5000 }).catch(() => undefined)
  return res?.status === 200 ? res.json : undefined
}

/** What the soak compares between start and end. */
function snapshot(t, s) {
  if (!s) return { t, missing: true }
  return {
    tS: Math.round(t / 1000),
    heapUsedMiB: +(s.process.heapUsed / 2 ** 20).toFixed(1),
    rssMiB: +(s.process.rss / 2 ** 20).toFixed(1),
    resources: s.process.resources,
    handles: Object.values(s.process.resources).reduce((a, b) => a + b, 0),
    pools: Object.fromEntries(
      s.router.members.map((m) => [
        m.member,
        { role: m.role, total: m.total, idle: m.idle, draining: m.draining },
      ]),
    ),
    l1Items: s.cache.l1Items,
    redisStatus: s.cache.redisStatus,
    breaker: s.cache.breaker,
  }
}

/** Least-squares slope of y over x, per minute (x in ms). */
function slopePerMinute(points) {
  const n = points.length
  if (n < 2) return 0
  const mx = points.reduce((a, p) => a + p.x, 0) / n
  const my = points.reduce((a, p) => a + p.y, 0) / n
  let num = 0
  let den = 0
  for (const p of points) {
    num += (p.x - mx) * (p.y - my)
    den += (p.x - mx) ** 2
  }
  return den === 0 ? 0 : (num / den) * 60_000
}

async function main() {
  const soakMs = envInt('SOAK_MS', 600_000)
  const everyMs = envInt('SOAK_FAILOVER_EVERY_MS', 120_000)
  const pauseMs = envInt('SOAK_PAUSE_MS', 10_000)
  const readers = envInt('SOAK_READERS', 8)
  const writers = envInt('SOAK_WRITERS', 2)
  mkdirSync(OUT, { recursive: true })
  const started = Date.now()
  const { startLab } = await importLab()
  console.log(
    `soak: ${soakMs / 1000} s, a failover every ${everyMs / 1000} s, Redis paused ${pauseMs / 1000} s between`,
  )
  const lab = await startLab({ nodes: 3, synchronousMode: true, redis: true })
  let app
  let load
  try {
    await lab.waitForReplicas(2)
    await applySchema(lab)
    const authors = (await lab.sql('SELECT DISTINCT author FROM books ORDER BY 1')).map((r) => r[0])
    app = await startApp(lab, { logFile: join(OUT, 'soak-app.log'), env: { DRAIN_DELAY_MS: '1000' } })
    load = createLoad({ url: app.url, readers, writers, authors })
    const samples = []
    const sampler = setInterval(() => {
      const t = load.now()
      stats(app.url).then((s) => s && samples.push({ t, s }))
    }, 5000)
    await sleep(10_000) // warm: pools filled, cache loaded
    const start = snapshot(load.now(), await stats(app.url))
    const failovers = []
    const pauses = []
    const events = []
    let rejoining = Promise.resolve()
    try {
      for (let at = everyMs / 2; at < soakMs; at += everyMs / 2) {
        const wait = at - load.now()
        if (wait > 0) await sleep(wait)
        const n = Math.round(at / (everyMs / 2))
        if (n % 2 === 0) {
          await rejoining // the previous victim is back before the next kill
          await lab.waitForReplicas(2, { timeoutMs: 60_000 }).catch(() => {})
          const old = await lab.killPrimary()
          const killedAt = load.now()
          events.push({ t: killedAt, label: `kill ${old}`, color: '#d62728' })
          const leader = await watchForNewLeader(lab, old, { now: load.now })
          failovers.push({ old, killedAt, leader })
          console.log(
            `t=${(killedAt / 1000).toFixed(0)} s: killed ${old}; new leader ${leader?.name ?? '?'} after ${leader ? ((leader.at - killedAt) / 1000).toFixed(1) : '?'} s`,
          )
          rejoining = rejoin(lab, old).catch((err) =>
            console.error(`rejoin of ${old} failed: ${err.message}`),
          )
        } else {
          const pausedAt = load.now()
          await lab.pauseRedis()
          events.push({ t: pausedAt, label: 'Redis paused', color: '#8c564b' })
          await sleep(pauseMs)
          await lab.resumeRedis()
          const resumedAt = load.now()
          events.push({ t: resumedAt, label: 'resumed', color: '#17becf' })
          pauses.push({ pausedAt, resumedAt })
          console.log(`t=${(pausedAt / 1000).toFixed(0)} s: Redis paused for ${pauseMs / 1000} s`)
        }
      }
      const rest = soakMs - load.now()
      if (rest > 0) await sleep(rest)
    } finally {
      clearInterval(sampler)
    }
    const endUnderLoad = snapshot(load.now(), await stats(app.url))
    const endedAt = load.now()
    await load.stop()
    await rejoining
    await sleep(15_000) // idle: pools shrink to what idleTimeoutMs leaves
    const endIdle = snapshot(load.now(), await stats(app.url))

    const rows = await lab.sql('SELECT id::text, returned_at IS NOT NULL FROM loans')
    const inDb = new Map(rows.map((r) => [r[0], r[1] === 't']))
    let lost = 0
    let lostReturns = 0
    for (const [id, e] of load.acked) {
      if (!inDb.has(id)) lost++
      if (e.returnedAckAt !== undefined && inDb.get(id) !== true) lostReturns++
    }
    const perFailover = failovers.map((f) => {
      const first = load.results.find(
        (r) =>
          r.kind === 'write' &&
          r.ok &&
          r.t > f.killedAt &&
          (r.t - r.ms > f.killedAt || (f.leader && r.t >= f.leader.at)),
      )
      // From 2 s before the kill (requests in flight when it happened) to 60 s after.
      const window = summarize(load.results, f.killedAt - 2000, f.killedAt + 60_000)
      return {
        killedAtS: +(f.killedAt / 1000).toFixed(1),
        old: f.old,
        newLeader: f.leader?.name,
        leaderVisibleS: f.leader ? +((f.leader.at - f.killedAt) / 1000).toFixed(2) : null,
        killToFirstWriteS: first ? +((first.t - f.killedAt) / 1000).toFixed(2) : null,
        errorsIn60s: Object.values(window.errors).reduce((a, b) => a + b, 0),
        errorTypes: window.errors,
      }
    })
    const perPause = pauses.map((p) => {
      const w = summarize(load.results, p.pausedAt, p.resumedAt + 5000)
      return {
        pausedAtS: +(p.pausedAt / 1000).toFixed(1),
        errors: Object.values(w.errors).reduce((a, b) => a + b, 0),
        p99Ms: +w.p99.toFixed(1),
      }
    })
    const heapPoints = samples
      .filter((x) => x.t > 10_000)
      .map((x) => ({ x: x.t, y: x.s.process.heapUsed / 2 ** 20 }))
    const handlePoints = samples
      .filter((x) => x.t > 10_000)
      .map((x) => ({ x: x.t, y: Object.values(x.s.process.resources).reduce((a, b) => a + b, 0) }))
    const total = summarize(load.results, 0, Number.POSITIVE_INFINITY)
    const report = {
      name: 'soak',
      date: new Date().toISOString(),
      durationS: Math.round((Date.now() - started) / 1000),
      soakMs,
      everyMs,
      pauseMs,
      load: { readers, writers },
      requests: total.requests,
      errors: total.requests - total.ok,
      errorTypes: total.errors,
      p50Ms: total.p50,
      p99Ms: total.p99,
      writes: { loansAcknowledged: load.acked.size, loansLost: lost, returnsLost: lostReturns },
      readYourWrites: load.ryw,
      failovers: perFailover,
      redisPauses: perPause,
      start,
      endUnderLoad,
      endIdle,
      heapSlopeMiBPerMin: +slopePerMinute(heapPoints).toFixed(2),
      handleSlopePerMin: +slopePerMinute(handlePoints).toFixed(2),
      heapMaxMiB: +Math.max(...heapPoints.map((p) => p.y)).toFixed(1),
    }
    writeFileSync(join(OUT, 'soak.json'), `${JSON.stringify(report, null, 2)}\n`)
    const svgPath = join(OUT, 'soak-timeline.svg')
    writeFileSync(
      svgPath,
      renderTimeline({
        buckets: perSecond(load.results, Math.floor(endedAt / 1000)),
        events,
        title: `soak: ${Math.round(soakMs / 60_000)} min, failover every ${everyMs / 1000} s, Redis paused between`,
      }),
    )
    svgToPng(svgPath)
    const section = renderSoak(report)
    console.log(section)
    const existing = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : '# Benchmark results\n'
    const block = `${SOAK_START}\n${section}\n${SOAK_END}`
    const a = existing.indexOf(SOAK_START)
    const b = existing.indexOf(SOAK_END)
    const next =
      a !== -1 && b > a
        ? existing.slice(0, a) + block + existing.slice(b + SOAK_END.length)
        : `${existing.trimEnd()}\n\n${block}\n`
    writeFileSync(RESULTS, next)
    if (lost + lostReturns > 0 || load.ryw.violations > 0) process.exitCode = 1
  } finally {
    if (load) await Promise.race([load.stop(), sleep(45_000)])
    if (app) await app.stop().catch(() => {})
    await lab.down()
  }
}

function renderSoak(r) {
  const lines = []
  const fmt = (x) => (x === null || x === undefined ? '-' : String(x))
  lines.push('## Soak')
  lines.push('')
  lines.push(
    `Command: \`node bench/soak/soak.mjs\` (SOAK_MS=${r.soakMs}; finished ${r.date.slice(0, 16).replace('T', ' ')} UTC, ${r.durationS} s in all). ` +
      `The Express example as a child process, ${r.load.readers} readers + ${r.load.writers} writers over HTTP, a 3-member Patroni cluster (synchronous_mode) and Redis from the lab; ` +
      `kill -9 of the primary every ${r.everyMs / 1000} s, Redis SIGSTOPped for ${r.pauseMs / 1000} s half-way between.`,
  )
  lines.push('')
  lines.push(
    `${r.requests} requests, ${r.errors} errors (${
      Object.entries(r.errorTypes)
        .map(([k, v]) => `${k}: ${v}`)
        .join(', ') || 'none'
    }); p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms. ` +
      `${r.writes.loansAcknowledged} loans acknowledged, ${r.writes.loansLost} lost, ${r.writes.returnsLost} returns lost; ` +
      `read-your-writes ${r.readYourWrites.checks} checks, ${r.readYourWrites.violations} violations.`,
  )
  lines.push('')
  lines.push('| | start (after 10 s warm-up) | end, under load | end, after 15 s idle |')
  lines.push('|---|---:|---:|---:|')
  const row = (label, f) =>
    lines.push(`| ${label} | ${f(r.start)} | ${f(r.endUnderLoad)} | ${f(r.endIdle)} |`)
  row('heap used (MiB)', (s) => fmt(s.heapUsedMiB))
  row('RSS (MiB)', (s) => fmt(s.rssMiB))
  row('open handles', (s) => fmt(s.handles))
  row('handles by type', (s) =>
    s.resources
      ? Object.entries(s.resources)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')
      : '-',
  )
  row('pool per member (total/idle, role)', (s) =>
    s.pools
      ? Object.entries(s.pools)
          .map(([k, p]) => `${k} ${p.total}/${p.idle} ${p.role}`)
          .join('; ')
      : '-',
  )
  row(
    'cache L1 items / Redis / breaker',
    (s) => `${fmt(s.l1Items)} / ${fmt(s.redisStatus)} / ${fmt(s.breaker)}`,
  )
  lines.push('')
  lines.push(
    `Heap trend over the run (least squares on 5 s samples): ${r.heapSlopeMiBPerMin} MiB/min (max ${r.heapMaxMiB} MiB); open handles: ${r.handleSlopePerMin}/min.`,
  )
  lines.push('')
  lines.push(
    '| failover at | killed | new leader | leader visible after | first write after | errors (sent 2 s before to 60 s after the kill) |',
  )
  lines.push('|---:|---|---|---:|---:|---|')
  for (const f of r.failovers) {
    const types = Object.entries(f.errorTypes)
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ')
    lines.push(
      `| ${f.killedAtS} s | ${f.old} | ${fmt(f.newLeader)} | ${fmt(f.leaderVisibleS)} s | ${fmt(f.killToFirstWriteS)} s | ${f.errorsIn60s}${types ? ` (${types})` : ''} |`,
    )
  }
  lines.push('')
  lines.push('| Redis paused at | errors (pause + 5 s) | p99 ms |')
  lines.push('|---:|---:|---:|')
  for (const p of r.redisPauses) lines.push(`| ${p.pausedAtS} s | ${p.errors} | ${p.p99Ms} |`)
  lines.push('')
  lines.push('Timeline: bench/out/soak-timeline.svg (not committed; rerun to get it).')
  return lines.join('\n')
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
