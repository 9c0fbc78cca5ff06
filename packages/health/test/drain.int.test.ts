import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import * as http from 'node:http'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

/**
 * A real service in a child process, under constant keep-alive load, gets SIGTERM. The
 * test plays the load balancer: it probes readiness every 100 ms and stops routing new
 * requests once readiness says 503, as a load balancer (or a Kubernetes endpoint removal)
 * would. No request may fail, including slow ones still in flight when the server stops
 * accepting; liveness stays 200 during the drain; the process exits 0.
 */

const root = fileURLToPath(new URL('../../../', import.meta.url))
const fixture = fileURLToPath(new URL('./fixtures/drain-server.mjs', import.meta.url))
const DRAIN_DELAY_MS = 1_000
let child: ChildProcess | undefined

beforeAll(() => {
  // The child imports the built package.
  execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', 'packages/health'], {
    cwd: root,
  })
})
afterAll(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL')
})

interface Reply {
  status: number
  connection: string | undefined
}

function request(agent: http.Agent, port: number, path: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent, timeout: 10_000 }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('client timeout')))
    req.on('error', reject)
  })
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('drain on SIGTERM (real child process)', () => {
  it('readiness 503 at once, liveness 200, zero failed requests, exit 0', async () => {
    child = spawn(process.execPath, [fixture], {
      cwd: root,
      env: { ...process.env, DRAIN_DELAY_MS: String(DRAIN_DELAY_MS) },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const events: { event: string; phase?: string; port?: number; elapsedMs?: number }[] = []
    const waiters: (() => void)[] = []
    createInterface({ input: child.stdout! }).on('line', (line) => {
      events.push(JSON.parse(line))
      for (const w of waiters.splice(0)) w()
    })
    const waitFor = async (pred: (e: (typeof events)[number]) => boolean) => {
      for (;;) {
        const e = events.find(pred)
        if (e) return e
        await new Promise<void>((r) => waiters.push(r))
      }
    }
    const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)))
    const { port } = (await waitFor((e) => e.event === 'listening')) as { port: number }

    // The load: 16 keep-alive connections, each sending back to back while routed.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
    let routing = true
    let ok = 0
    const failures: string[] = []
    const worker = async () => {
      while (routing) {
        try {
          const r = await request(agent, port, '/work?ms=5')
          if (r.status === 200) ok++
          else failures.push(`status ${r.status}`)
        } catch (err) {
          failures.push((err as Error).message)
        }
      }
    }
    const workers = Array.from({ length: 16 }, worker)

    // The load balancer's probe: a fresh connection every 100 ms.
    const probeAgent = new http.Agent({ keepAlive: false })
    let probing = true
    let sigtermAt = 0
    let firstFailAfterMs: number | undefined
    const prober = (async () => {
      while (probing) {
        const r = await request(probeAgent, port, '/ready').catch(() => undefined)
        if (r && r.status === 503 && sigtermAt > 0) {
          firstFailAfterMs ??= performance.now() - sigtermAt
          routing = false // stop routing new requests to this pod
        }
        await sleep(100)
      }
    })()

    await sleep(1_000)
    expect(ok).toBeGreaterThan(100)
    // Slow requests in flight across the moment the server stops accepting.
    const slow = Array.from({ length: 8 }, () => request(agent, port, `/work?ms=${DRAIN_DELAY_MS + 500}`))
    await sleep(50)
    sigtermAt = performance.now()
    child.kill('SIGTERM')
    await waitFor((e) => e.phase === 'draining')
    const firstAfter = await request(probeAgent, port, '/ready')
    expect(firstAfter.status).toBe(503)

    // Liveness stays 200 until the server stops accepting (refused after that: expected).
    const liveness: number[] = []
    while (!events.some((e) => e.phase === 'closing-servers')) {
      const r = await request(probeAgent, port, '/healthz').catch(() => undefined)
      if (r) liveness.push(r.status)
      await sleep(50)
    }
    expect(liveness.length).toBeGreaterThan(5)
    expect(new Set(liveness)).toEqual(new Set([200]))

    const slowReplies = await Promise.all(slow)
    expect(slowReplies.map((r) => r.status)).toEqual(Array(8).fill(200))
    expect(slowReplies.every((r) => r.connection === 'close')).toBe(true)
    probing = false
    await Promise.all([...workers, prober])
    expect(await exited).toBe(0)
    agent.destroy()

    expect(failures).toEqual([])
    expect(firstFailAfterMs).toBeDefined()
    expect(events.map((e) => e.phase ?? e.event)).toEqual([
      'listening',
      'draining',
      'closing-servers',
      'closing-resources',
      'db-closed',
      'closed',
    ])
    console.log(
      `drain: ${ok} requests ok, ${failures.length} failed; readiness 503 seen by a 100 ms prober ${Math.round(firstFailAfterMs!)} ms after SIGTERM`,
    )
  })
})
