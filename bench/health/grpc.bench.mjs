/**
 * gRPC health: (1) throughput of `grpc.health.v1.Health/Check` (addHealthService, answered
 * from health's cached state) against a bare unary handler on the same server that answers a
 * precomputed message of the same type (same (de)serializers, no logic): the ratio is what
 * the health service costs per call. (2) SIGTERM -> NOT_SERVING on a Watch('') stream, over
 * RUNS child processes, with calls in flight across the drain (failed calls counted) and
 * the exit code.
 * The server is packages/health/test/fixtures/grpc-server.mjs (the integration test's
 * fixture) in its own process; the client runs here (one channel, CONCURRENCY calls in
 * flight), interleaved rounds of SECONDS per method.
 *
 * Run:  npx tsc -b packages/health && node bench/health/grpc.bench.mjs
 * Env:  ROUNDS (default 10), SECONDS (default 1), CONCURRENCY (default 32), RUNS (default 20)
 * Out:  markdown on stdout and bench/out/health-grpc.json
 */
import { spawn } from 'node:child_process'
import { loadavg } from 'node:os'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { healthServiceDefinition } from '../../packages/health/dist/grpc.js'
import { markdownTable, median, percentile, writeJson } from '../lib/measure.mjs'

const ROUNDS = Number(process.env.ROUNDS ?? 10)
const SECONDS = Number(process.env.SECONDS ?? 1)
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32)
const RUNS = Number(process.env.RUNS ?? 20)
const fixture = fileURLToPath(new URL('../../packages/health/test/fixtures/grpc-server.mjs', import.meta.url))
const root = fileURLToPath(new URL('../../', import.meta.url))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const load = () =>
  loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')

const raw = (b) => b
const App = grpc.makeGenericClientConstructor(
  {
    Work: {
      path: '/fixture.App/Work',
      requestStream: false,
      responseStream: false,
      requestSerialize: raw,
      requestDeserialize: raw,
      responseSerialize: raw,
      responseDeserialize: raw,
    },
    Bare: { ...healthServiceDefinition.Check, path: '/fixture.App/Bare' },
  },
  'App',
)
const Health = grpc.makeGenericClientConstructor(healthServiceDefinition, 'Health')

function startFixture(env = {}) {
  const child = spawn(process.execPath, [fixture], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const events = []
  const listening = new Promise((resolve) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const e = JSON.parse(line)
      events.push(e)
      if (e.event === 'listening') resolve(e.port)
    })
  })
  const exited = new Promise((r) => child.once('exit', (code) => r({ code, at: performance.now() })))
  return { child, listening, exited, events }
}

const unary = (client, method, req) =>
  new Promise((resolve, reject) => client[method](req, (err, res) => (err ? reject(err) : resolve(res))))

/** Calls per second with CONCURRENCY calls in flight for `seconds`. */
async function throughput(fn, seconds) {
  let calls = 0
  let errors = 0
  const end = performance.now() + seconds * 1000
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) {
        try {
          await fn()
          calls++
        } catch {
          errors++
        }
      }
    }),
  )
  return { rate: calls / seconds, calls, errors }
}

// (1) Throughput, Check vs a bare unary handler, same server, same channel.
const server = startFixture({ DRAIN_DELAY_MS: '0' })
const port = await server.listening
const channelOptions = {}
const health = new Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions)
const app = new App(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions)
const cases = {
  bare: () => unary(app, 'Bare', { service: '' }),
  check: () => unary(health, 'Check', { service: '' }),
}
for (const name of Object.keys(cases)) await throughput(cases[name], 1) // warm-up
const loadBefore = load()
const rates = { bare: [], check: [] }
const totals = { bare: 0, check: 0 }
let errors = 0
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? ['bare', 'check'] : ['check', 'bare']
  for (const name of order) {
    const t = await throughput(cases[name], SECONDS)
    rates[name].push(t.rate)
    totals[name] += t.calls
    errors += t.errors
  }
}
const loadAfter = load()
health.close()
app.close()
server.child.kill('SIGTERM')
await server.exited
const pair = rates.check.map((c, i) => c / rates.bare[i])
console.log(
  `Throughput, ${ROUNDS} interleaved rounds of ${SECONDS} s, ${CONCURRENCY} calls in flight on one channel; load average ${loadBefore} before, ${loadAfter} after.\n`,
)
console.log(
  markdownTable(
    [
      'handler',
      'calls/s (median of rounds)',
      'calls in all',
      'vs bare (all calls)',
      'vs bare (median of per-round ratios)',
    ],
    [
      [
        'bare unary handler (precomputed HealthCheckResponse)',
        Math.round(median(rates.bare)),
        totals.bare,
        '1.00',
        '1.00',
      ],
      [
        "grpc.health.v1 Check('') (addHealthService)",
        Math.round(median(rates.check)),
        totals.check,
        (totals.check / totals.bare).toFixed(3),
        median(pair).toFixed(3),
      ],
    ],
  ),
)
console.log(`\nerrors: ${errors}`)

// (2) SIGTERM -> NOT_SERVING on Watch(''), RUNS times.
async function drainRun() {
  const s = startFixture({ DRAIN_DELAY_MS: '300' })
  const p = await s.listening
  const h = new Health(`127.0.0.1:${p}`, grpc.credentials.createInsecure())
  const a = new App(`127.0.0.1:${p}`, grpc.credentials.createInsecure())
  await unary(h, 'Check', { service: '' })
  let notServingAt
  let firstWatch
  const watchReady = new Promise((resolve) => {
    firstWatch = resolve
  })
  const gotIt = new Promise((resolve) => {
    const stream = h.Watch({ service: '' })
    stream.on('data', (m) => {
      firstWatch()
      if (m.status === 'NOT_SERVING' && notServingAt === undefined) {
        notServingAt = performance.now()
        resolve()
      }
    })
    stream.on('error', () => {})
  })
  await watchReady
  // 8 calls in flight across the moment the server stops accepting.
  const inflight = Array.from({ length: 8 }, () =>
    unary(a, 'Work', Buffer.from('500')).then(
      () => 0,
      () => 1,
    ),
  )
  await sleep(20)
  const t0 = performance.now()
  s.child.kill('SIGTERM')
  await gotIt
  const failed = (await Promise.all(inflight)).reduce((x, y) => x + y, 0)
  const exit = await s.exited
  h.close()
  a.close()
  return { notServingMs: notServingAt - t0, failed, exitCode: exit.code, exitMs: exit.at - t0 }
}
const runs = []
const loadDrain = load()
for (let i = 0; i < RUNS; i++) runs.push(await drainRun())
const ns = runs.map((r) => r.notServingMs)
const within5 = ns.filter((x) => x <= 5).length
console.log(
  `\nSIGTERM -> NOT_SERVING on a Watch('') stream (kill() in this process to the message received here), ${RUNS} child processes with drainDelayMs 300; load average ${loadDrain} before, ${load()} after.\n`,
)
console.log(
  markdownTable(
    [
      'runs',
      'median',
      'p90',
      'max',
      'within 5 ms',
      'in-flight calls failed (8 per run)',
      'exit codes',
      'SIGTERM -> exit (median)',
    ],
    [
      [
        RUNS,
        `${median(ns).toFixed(2)} ms`,
        `${percentile(ns, 90).toFixed(2)} ms`,
        `${Math.max(...ns).toFixed(2)} ms`,
        `${within5} of ${RUNS}`,
        runs.reduce((a, r) => a + r.failed, 0),
        [...new Set(runs.map((r) => r.exitCode))].join(','),
        `${Math.round(median(runs.map((r) => r.exitMs)))} ms`,
      ],
    ],
  ),
)
console.log(`wrote ${writeJson('health-grpc', { rates, totals, pair, runs, ROUNDS, SECONDS, CONCURRENCY })}`)
