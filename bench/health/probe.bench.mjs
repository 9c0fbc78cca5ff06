/**
 * Readiness throughput: @resilient/health's readiness handler (cached results, two checks)
 * against a bare node:http handler that writes a precomputed body of the same size with the
 * same headers. Each server runs in its own process; autocannon runs here. Interleaved
 * rounds (bare, health, health, bare, ...), SECONDS per round per server.
 * Also counts how often the checks ran while being probed.
 *
 * Run:  npx tsc -b packages/health && node bench/health/probe.bench.mjs
 * Env:  ROUNDS (default 10), SECONDS (default 1) -> 10 s per server; CONNECTIONS (default 50)
 * Out:  a markdown table on stdout and bench/out/health-probe.json
 * Note: on a 2-core machine autocannon and the server share the cores: a ratio, not a capacity.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import { createHealth } from '../../packages/health/dist/index.js'
import { fmtNs, markdownTable, median, rounds, writeJson } from '../lib/measure.mjs'

const ROUNDS = Number(process.env.ROUNDS ?? 10)
const SECONDS = Number(process.env.SECONDS ?? 1)
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50)
const serverScript = fileURLToPath(new URL('./probe-server.mjs', import.meta.url))

async function start(args) {
  const child = spawn(process.execPath, [serverScript, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(child.stdout, 'data')
  const { port } = JSON.parse(String(line))
  return { child, url: `http://127.0.0.1:${port}` }
}

const health = await start(['health'])
const sample = await (await fetch(`${health.url}/ready`)).text()
const bare = await start(['bare', sample])
const servers = { bare, health }

// Warm both up (JIT, sockets), uncounted.
for (const name of ['bare', 'health']) {
  await autocannon({ url: `${servers[name].url}/ready`, connections: CONNECTIONS, duration: 1 })
}
const callsBefore = await (await fetch(`${health.url}/calls`)).json()
const rps = { bare: [], health: [] }
const totals = { bare: 0, health: 0 }
let errors = 0
let non2xx = 0
const t0 = performance.now()
let healthSeconds = 0
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? ['bare', 'health'] : ['health', 'bare']
  for (const name of order) {
    const result = await autocannon({
      url: `${servers[name].url}/ready`,
      connections: CONNECTIONS,
      duration: SECONDS,
    })
    rps[name].push(result.requests.total / SECONDS)
    totals[name] += result.requests.total
    errors += result.errors
    non2xx += result.non2xx
    if (name === 'health') healthSeconds += SECONDS
  }
}
const elapsedS = (performance.now() - t0) / 1000
const callsAfter = await (await fetch(`${health.url}/calls`)).json()
for (const s of Object.values(servers)) s.child.kill('SIGTERM')

const ratioOfMedians = median(rps.health) / median(rps.bare)
// Each round ran both back to back: the ratio within a round cancels slow drifts of the machine.
const pairRatios = rps.health.map((h, i) => h / rps.bare[i])
const medianPairRatio = median(pairRatios)
const ratioOfTotals = totals.health / totals.bare
const calls = Object.fromEntries(Object.keys(callsAfter).map((k) => [k, callsAfter[k] - callsBefore[k]]))
console.log(
  markdownTable(
    [
      'server',
      'req/s (median of rounds)',
      'requests in all',
      'vs bare (all requests)',
      'vs bare (median of per-round ratios)',
    ],
    [
      ['bare node:http', Math.round(median(rps.bare)), totals.bare, '100%', '100%'],
      [
        'health.readiness',
        Math.round(median(rps.health)),
        totals.health,
        `${(ratioOfTotals * 100).toFixed(1)}%`,
        `${(medianPairRatio * 100).toFixed(1)}%`,
      ],
    ],
  ),
)
console.log(
  `\nchecks ran ${JSON.stringify(calls)} in ${elapsedS.toFixed(1)} s (interval 2 s) while serving ${totals.health} probes; errors ${errors}, non-2xx ${non2xx}`,
)
// The same two handlers in this process, without sockets: what a probe costs on the CPU.
const inproc = createHealth({
  intervalMs: 2_000,
  eventLoop: false,
  checks: { postgres: async () => ({ status: 'pass' }), redis: { check: async () => true, critical: false } },
})
await inproc.refresh()
const body = inproc.readinessResponse().body
const headers = {
  'content-type': 'application/health+json',
  'cache-control': 'no-store',
  'content-length': Buffer.byteLength(body),
}
const req = { url: '/ready', method: 'GET' }
const res = { writeHead: () => res, end: () => res }
const cpu = await rounds(
  {
    bare: () => {
      res.writeHead(200, headers)
      res.end(body)
    },
    readiness: () => inproc.readiness(req, res),
  },
  { rounds: 15, iterations: 200_000 },
)
console.log(
  `\nhandler CPU cost without sockets (median of 15 rounds): bare ${fmtNs(cpu.bare.median)}, health.readiness ${fmtNs(cpu.readiness.median)} per probe`,
)

const path = writeJson('health-probe', {
  handlerNs: { bare: cpu.bare.median, readiness: cpu.readiness.median },
  rounds: ROUNDS,
  secondsPerRound: SECONDS,
  connections: CONNECTIONS,
  rps,
  totals,
  ratioOfMedians,
  ratioOfTotals,
  pairRatios,
  medianPairRatio,
  checkCalls: calls,
  elapsedSeconds: elapsedS,
  healthSeconds,
  errors,
  non2xx,
})
console.log(`wrote ${path}`)
