/**
 * Load shedding: the same Express service (bench/health/shed-server.mjs: a 5 ms wait, then
 * 1 ms of CPU per request) without and with `shed` (maxEventLoopDelayMs 10, sampleIntervalMs 10), side by side.
 * Each is measured unloaded (LOW x the capacity measured first, closed loop, on the plain
 * service) and overloaded (OVERLOAD x that capacity), open loop: requests are sent on a
 * fixed schedule whatever the answers, and each latency counts from its scheduled time (no
 * coordinated omission). The target: the shed service's p99 of the requests it accepts,
 * overloaded, within 2x of its unloaded p99.
 *
 * Run:  npx tsc -b packages/health && node bench/health/shed.bench.mjs
 * Env:  SECONDS (default 5 per phase), LOW (default 0.25), OVERLOAD (default 2), ROUNDS (default 3)
 * Out:  markdown on stdout and bench/out/health-shed.json
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import http from 'node:http'
import { loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { markdownTable, median, percentile, writeJson } from '../lib/measure.mjs'

const SECONDS = Number(process.env.SECONDS ?? 5)
const LOW = Number(process.env.LOW ?? 0.25)
const OVERLOAD = Number(process.env.OVERLOAD ?? 2)
const ROUNDS = Number(process.env.ROUNDS ?? 3)
const serverScript = fileURLToPath(new URL('./shed-server.mjs', import.meta.url))
const load = () =>
  loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')

async function start(variant) {
  const child = spawn(process.execPath, [serverScript, variant], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(child.stdout, 'data')
  return { child, port: JSON.parse(String(line)).port }
}

function get(agent, port, path) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.setTimeout(30_000, () => req.destroy())
    req.on('error', () => resolve(0))
  })
}

/** Closed loop, `connections` back to back, for `seconds`: requests/s the service completes. */
async function capacity(port, seconds, connections = 16) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections })
  let n = 0
  const end = performance.now() + seconds * 1000
  await Promise.all(
    Array.from({ length: connections }, async (_, i) => {
      while (performance.now() < end) if ((await get(agent, port, `/books/${i}`)) === 200) n++
    }),
  )
  agent.destroy()
  return n / seconds
}

/** Open loop at `rate` requests/s for `seconds`: latency of each answer from its scheduled time. */
async function openLoop(port, rate, seconds) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 })
  const ok = []
  let shed = 0
  let errors = 0
  const pending = []
  const t0 = performance.now()
  const total = Math.round(rate * seconds)
  let sent = 0
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate))
      while (sent < due) {
        const scheduled = t0 + (sent / rate) * 1000
        sent++
        pending.push(
          get(agent, port, `/books/${sent % 400}`).then((status) => {
            const ms = performance.now() - scheduled
            if (status === 200) ok.push(ms)
            else if (status === 503) shed++
            else errors++
          }),
        )
      }
      if (sent >= total) resolve()
      else setTimeout(tick, 2)
    }
    tick()
  })
  await Promise.all(pending)
  agent.destroy()
  return {
    sent: total,
    accepted: ok.length,
    shed,
    errors,
    p50: median(ok),
    p99: percentile(ok, 99),
    max: ok.length ? Math.max(...ok) : Number.NaN,
    goodput: ok.length / seconds,
  }
}

const servers = { plain: await start('plain'), shed: await start('shed') }
for (const s of Object.values(servers)) await capacity(s.port, 1) // warm-up
const loadStart = load()
// The best of three: a busy moment of the machine must not pass for the service's capacity.
const caps = []
for (let i = 0; i < 3; i++) caps.push(await capacity(servers.plain.port, 1.5))
const cap = Math.max(...caps)
const overRate = Math.round(cap * OVERLOAD)
const lowRate = Math.max(1, Math.round(cap * LOW))
const results = { plain: { low: [], over: [] }, shed: { low: [], over: [] } }
for (let r = 0; r < ROUNDS; r++) {
  for (const name of r % 2 === 0 ? ['plain', 'shed'] : ['shed', 'plain']) {
    results[name].low.push(await openLoop(servers[name].port, lowRate, SECONDS))
    results[name].over.push(await openLoop(servers[name].port, overRate, SECONDS))
    await new Promise((res) => setTimeout(res, 500))
  }
}
const stats = await (await fetch(`http://127.0.0.1:${servers.shed.port}/stats`)).json()
for (const s of Object.values(servers)) s.child.kill('SIGTERM')
const loadEnd = load()

const f = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : 'n/a')
const rows = []
const summary = {}
for (const name of ['plain', 'shed']) {
  const low = results[name].low
  const over = results[name].over
  const lowP99 = median(low.map((x) => x.p99))
  const overP99 = median(over.map((x) => x.p99))
  summary[name] = { lowP99, overP99, ratio: overP99 / lowP99 }
  rows.push([
    name === 'plain' ? 'without shedding' : 'with `shed` (maxEventLoopDelayMs 10, sampleIntervalMs 10)',
    f(median(low.map((x) => x.p50))),
    f(lowP99),
    f(median(over.map((x) => x.p50))),
    f(overP99),
    `${(overP99 / lowP99).toFixed(2)}x`,
    `${over.reduce((a, x) => a + x.accepted, 0)} of ${over.reduce((a, x) => a + x.sent, 0)}`,
    over.reduce((a, x) => a + x.shed, 0),
    Math.round(median(over.map((x) => x.goodput))),
    low.reduce((a, x) => a + x.shed, 0),
  ])
}
console.log(
  `Capacity of the plain service (closed loop, 16 connections, best of 3 x 1.5 s: ${caps.map(Math.round).join(', ')}): ${Math.round(cap)} requests/s; overload offered: ${overRate} requests/s open loop (${OVERLOAD}x), unloaded: ${lowRate} requests/s (${LOW}x); ${ROUNDS} rounds of ${SECONDS} s per phase, services interleaved; load average ${loadStart} at the start, ${loadEnd} at the end.\n`,
)
console.log(
  markdownTable(
    [
      'service',
      'unloaded p50',
      'unloaded p99',
      'overloaded p50 (accepted)',
      'overloaded p99 (accepted)',
      'overloaded p99 / unloaded p99',
      'accepted (overloaded)',
      'shed 503s (overloaded)',
      'goodput (req/s, overloaded)',
      'shed while unloaded',
    ],
    rows,
  ),
)
console.log(`\nshedder's own count: ${JSON.stringify(stats.byReason ?? {})}`)
console.log(`wrote ${writeJson('health-shed', { cap, overRate, results, summary, stats })}`)
