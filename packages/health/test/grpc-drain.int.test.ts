import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { check, healthClient, watch } from './grpc-client.js'

/**
 * A real gRPC service in a child process gets SIGTERM while clients call it. The test plays
 * the load balancer: it watches readiness (Watch '') and stops sending new calls once it says
 * NOT_SERVING. No call may fail, including slow ones still in flight when the server stops
 * accepting; the process exits 0. The time from kill() to NOT_SERVING on the Watch stream is
 * printed and bounded loosely here (the 5 ms figure is a distribution, in
 * bench/health/grpc.bench.mjs: one test run on a loaded 2-core machine could be descheduled).
 */

const root = fileURLToPath(new URL('../../../', import.meta.url))
const fixture = fileURLToPath(new URL('./fixtures/grpc-server.mjs', import.meta.url))
const DRAIN_DELAY_MS = 500
let child: ChildProcess | undefined

beforeAll(() => {
  execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', 'packages/health'], {
    cwd: root,
  })
})
afterAll(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL')
})

const raw = (b: Buffer) => b
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
  },
  'App',
)

describe('gRPC drain on SIGTERM (real child process)', () => {
  it('NOT_SERVING at once, zero failed calls in flight, graceful shutdown, exit 0', async () => {
    child = spawn(process.execPath, [fixture], {
      cwd: root,
      env: { ...process.env, DRAIN_DELAY_MS: String(DRAIN_DELAY_MS) },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const events: { event: string; phase?: string; port?: number }[] = []
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

    const probe = healthClient(port)
    const app = new App(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as any
    const call = (ms: number) =>
      new Promise<void>((resolve, reject) =>
        app.Work(Buffer.from(String(ms)), { deadline: Date.now() + 10_000 }, (err: Error | null) =>
          err ? reject(err) : resolve(),
        ),
      )
    expect(await check(probe, '')).toBe('SERVING')
    const ready = watch(probe, '')
    await ready.until('SERVING')

    // The load: 8 callers back to back while the "load balancer" routes to this pod.
    let routing = true
    let ok = 0
    const failures: string[] = []
    const workers = Array.from({ length: 8 }, async () => {
      while (routing) {
        try {
          await call(5)
          ok++
        } catch (err) {
          failures.push((err as Error).message)
        }
      }
    })
    void ready.until('NOT_SERVING', 60_000).then(
      () => {
        routing = false
      },
      () => {},
    )
    await new Promise((r) => setTimeout(r, 500))
    expect(ok).toBeGreaterThan(20)
    // Slow calls in flight across the moment the server stops accepting.
    const slow = Array.from({ length: 8 }, () =>
      call(DRAIN_DELAY_MS + 300).then(
        () => 'ok',
        (e: Error) => e.message,
      ),
    )
    await new Promise((r) => setTimeout(r, 50))
    const t0 = performance.now()
    child.kill('SIGTERM')
    const notServing = await ready.until('NOT_SERVING')
    const afterMs = notServing.at - t0
    console.log(`gRPC drain: Watch('') NOT_SERVING ${afterMs.toFixed(2)} ms after kill(SIGTERM)`)
    expect(afterMs).toBeLessThan(1_000) // loose on purpose: see the bench for the distribution
    // Liveness stays SERVING during the drain delay.
    expect(await check(probe, 'liveness')).toBe('SERVING')
    expect(await Promise.all(slow)).toEqual(Array(8).fill('ok'))
    await Promise.all(workers)
    expect(await exited).toBe(0)
    expect(failures).toEqual([])
    expect(ready.ended).toBe(true)
    expect(events.map((e) => e.phase ?? e.event)).toEqual([
      'listening',
      'draining',
      'closing-servers',
      'closing-resources',
      'closed',
    ])
    probe.close()
    app.close()
    console.log(`gRPC drain: ${ok} calls ok, ${failures.length} failed, 8 slow calls in flight at close ok`)
  })
})
