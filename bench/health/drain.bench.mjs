/**
 * SIGTERM drain of a real service process (packages/health/test/fixtures/drain-server.mjs:
 * node:http + createHealth({ drainDelayMs: 1000, handleSignals: true })) under keep-alive load.
 * Per run: how long after kill(SIGTERM) readiness first answers 503 (polled back to back on a
 * kept-alive connection), whether liveness stayed 200 during the drain, how many load requests
 * failed (the load stops being routed once a 100 ms load-balancer probe sees 503), the exit code,
 * and the time from SIGTERM to exit.
 *
 * Run:  npx tsc -b packages/health && node bench/health/drain.bench.mjs
 * Env:  RUNS (default 5)
 * Out:  a markdown table on stdout and bench/out/health-drain.json
 */
import { spawn } from 'node:child_process'
import http from 'node:http'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { markdownTable, median, writeJson } from '../lib/measure.mjs'

const RUNS = Number(process.env.RUNS ?? 5)
const fixture = fileURLToPath(
  new URL('../../packages/health/test/fixtures/drain-server.mjs', import.meta.url),
)
const root = fileURLToPath(new URL('../../', import.meta.url))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function request(agent, port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent, timeout: 10_000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.on('timeout', () => req.destroy(new Error('client timeout')))
    req.on('error', reject)
  })
}

async function run() {
  const child = spawn(process.execPath, [fixture], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((r) => child.once('exit', (code) => r({ code, at: performance.now() })))
  const port = await new Promise((resolve) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const e = JSON.parse(line)
      if (e.event === 'listening') resolve(e.port)
    })
  })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  let routing = true
  let ok = 0
  let failed = 0
  const workers = Array.from({ length: 16 }, async () => {
    while (routing) {
      try {
        if ((await request(agent, port, '/work?ms=5')) === 200) ok++
        else failed++
      } catch {
        failed++
      }
    }
  })
  let sigtermAt = 0
  let probing = true
  const lbAgent = new http.Agent({ keepAlive: false })
  const lb = (async () => {
    while (probing) {
      const s = await request(lbAgent, port, '/ready').catch(() => undefined)
      if (s === 503 && sigtermAt) routing = false
      await sleep(100)
    }
  })()
  await sleep(1_000)
  // A tight readiness poller on its own kept-alive connection.
  const pollAgent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  await request(pollAgent, port, '/ready')
  let livenessOk = true
  sigtermAt = performance.now()
  child.kill('SIGTERM')
  let first503Ms
  while (first503Ms === undefined) {
    const s = await request(pollAgent, port, '/ready')
    if (s === 503) first503Ms = performance.now() - sigtermAt
  }
  const liveAgent = new http.Agent({ keepAlive: false })
  while (performance.now() - sigtermAt < 900) {
    const s = await request(liveAgent, port, '/healthz').catch(() => 'refused')
    if (s !== 200) livenessOk = false
    await sleep(50)
  }
  pollAgent.destroy()
  const exit = await exited
  probing = false
  await Promise.all([...workers, lb])
  agent.destroy()
  return { first503Ms, livenessOk, ok, failed, exitCode: exit.code, exitMs: exit.at - sigtermAt }
}

const results = []
for (let i = 0; i < RUNS; i++) results.push(await run())
const f = (x) => x.toFixed(2)
console.log(
  markdownTable(
    [
      'run',
      'SIGTERM -> first 503 (ms)',
      'liveness 200 during drain',
      'requests ok',
      'failed',
      'exit code',
      'SIGTERM -> exit (ms)',
    ],
    results.map((r, i) => [
      i + 1,
      f(r.first503Ms),
      r.livenessOk,
      r.ok,
      r.failed,
      r.exitCode,
      Math.round(r.exitMs),
    ]),
  ),
)
console.log(
  `\nmedian SIGTERM -> first 503: ${f(median(results.map((r) => r.first503Ms)))} ms (max ${f(Math.max(...results.map((r) => r.first503Ms)))} ms); failed requests in all runs: ${results.reduce((a, r) => a + r.failed, 0)}`,
)
console.log(`wrote ${writeJson('health-drain', { runs: results, drainDelayMs: 1_000 })}`)
