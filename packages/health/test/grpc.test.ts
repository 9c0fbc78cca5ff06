import * as grpc from '@grpc/grpc-js'
import { createHealth, type Health, type HealthOptions } from '@resilient/health'
import { addHealthService } from '@resilient/health/grpc'
import { afterEach, describe, expect, it } from 'vitest'
import { check, type HealthClient, healthClient, startServer, watch } from './grpc-client.js'

/** A real @grpc/grpc-js server with the health service, and a real health client. */

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

const state = { db: true, cache: true, slow: false }

async function setup(options: HealthOptions = {}, grpcOptions = {}) {
  state.db = true
  state.cache = true
  state.slow = false
  const health: Health = createHealth({
    eventLoop: false,
    intervalMs: 100,
    checks: {
      db: { check: async () => state.db, critical: true },
      cache: { check: async () => state.cache, critical: false },
      // warn: degraded but serving (what cache.check says while Redis is down)
      queue: {
        check: async () => (state.slow ? { status: 'warn' as const, output: 'slow' } : true),
        critical: false,
      },
    },
    ...options,
  })
  const server = new grpc.Server()
  const disposable = addHealthService(server, health, grpcOptions)
  const port = await startServer(server)
  const client = healthClient(port)
  cleanup.push(
    () => client.close(),
    () => health.shutdown({ drainDelayMs: 0 }),
    () => server.forceShutdown(),
  )
  return { health, server, client, disposable, port }
}

const statuses = (client: HealthClient, services: string[]) =>
  Promise.all(services.map((s) => check(client, s)))

describe('grpc.health.v1 Check', () => {
  it("'' is readiness (SERVING on pass and warn), each check by its name, liveness under its own name", async () => {
    const { health, client } = await setup()
    await health.refresh()
    const all = ['', 'db', 'cache', 'liveness']
    expect(await statuses(client, all)).toEqual(['SERVING', 'SERVING', 'SERVING', 'SERVING'])
    state.cache = false // non-critical: readiness warn, still SERVING
    await health.refresh()
    expect(health.status).toBe('warn')
    expect(await statuses(client, all)).toEqual(['SERVING', 'SERVING', 'NOT_SERVING', 'SERVING'])
    state.db = false // critical: readiness fail
    await health.refresh()
    expect(await statuses(client, all)).toEqual(['NOT_SERVING', 'NOT_SERVING', 'NOT_SERVING', 'SERVING'])
    await expect(check(client, 'nope')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND })
  })

  it("a check that warns: '' stays SERVING, the check's own service is NOT_SERVING", async () => {
    const { health, client } = await setup()
    state.slow = true
    await health.refresh()
    expect(health.status).toBe('warn')
    expect(await statuses(client, ['', 'queue', 'db'])).toEqual(['SERVING', 'NOT_SERVING', 'SERVING'])
  })

  it('answers from cached state: 300 Checks run no check', async () => {
    const { health, client } = await setup({ intervalMs: 60_000 })
    await health.refresh()
    const before = health.checkCalls()
    await Promise.all(Array.from({ length: 300 }, (_, i) => check(client, ['', 'db', 'cache'][i % 3]!)))
    expect(health.checkCalls()).toEqual(before)
  })

  it('NOT_SERVING before the first results (SERVING with readyBeforeFirstCheck)', async () => {
    const never = { check: () => new Promise<boolean>(() => {}), timeoutMs: 60_000 }
    const a = await setup({ checks: { db: never } })
    expect(await statuses(a.client, ['', 'db'])).toEqual(['NOT_SERVING', 'NOT_SERVING'])
    const b = await setup({ checks: { db: never }, readyBeforeFirstCheck: true })
    expect(await statuses(b.client, ['', 'db'])).toEqual(['SERVING', 'SERVING'])
  })

  it('List gives every service', async () => {
    const { health, client } = await setup({}, { livenessService: 'live' })
    state.cache = false
    await health.refresh()
    const res = await new Promise<any>((resolve, reject) =>
      client.List({}, (err, r) => (err ? reject(err) : resolve(r))),
    )
    expect(res.statuses).toEqual({
      '': { status: 'SERVING' },
      db: { status: 'SERVING' },
      cache: { status: 'NOT_SERVING' },
      queue: { status: 'SERVING' },
      live: { status: 'SERVING' },
    })
  })
})

describe('grpc.health.v1 Watch', () => {
  it('streams each change within one check interval, without a refresh() or a probe', async () => {
    const { health, client } = await setup({ intervalMs: 100 })
    await health.refresh()
    const ready = watch(client, '')
    const db = watch(client, 'db')
    const cache = watch(client, 'cache')
    await ready.until('SERVING')
    await db.until('SERVING')
    const t0 = performance.now()
    state.db = false
    const down = await db.until('NOT_SERVING')
    await ready.until('NOT_SERVING')
    // Within one interval (100 ms), with room for a busy machine.
    expect(down.at - t0).toBeLessThan(100 + 400)
    state.db = true
    await db.until('SERVING', 10_000, 2)
    await ready.until('SERVING', 10_000, 2)
    state.cache = false
    await cache.until('NOT_SERVING')
    expect(health.status).toBe('warn')
    // Only changes are sent: '' saw SERVING, NOT_SERVING, SERVING, and nothing for the warn.
    expect(ready.statuses()).toEqual(['SERVING', 'NOT_SERVING', 'SERVING'])
    expect(db.statuses()).toEqual(['SERVING', 'NOT_SERVING', 'SERVING'])
  })

  it('an unknown service gets SERVICE_UNKNOWN and the stream stays open', async () => {
    const { client } = await setup()
    const w = watch(client, 'nope')
    await w.until('SERVICE_UNKNOWN')
    expect(w.ended).toBe(false)
    w.stream.cancel()
  })

  it('liveness turns NOT_SERVING on an event-loop stall', async () => {
    const { client } = await setup({ eventLoop: { maxDelayMs: 100, sampleMs: 10, windowMs: 500 } })
    const live = watch(client, 'liveness')
    await live.until('SERVING')
    const until = performance.now() + 300
    while (performance.now() < until) {
      // block the loop for 300 ms
    }
    await live.until('NOT_SERVING')
    await live.until('SERVING', 10_000, 1)
    expect(await check(client, 'liveness')).toBe('SERVING')
  })
})

describe('drain', () => {
  it('every readiness service turns NOT_SERVING at once; liveness stays SERVING; then a graceful shutdown', async () => {
    const { health, client, server } = await setup()
    // A slow unary method of the application on the same server.
    let slowStarted!: () => void
    const started = new Promise<void>((r) => {
      slowStarted = r
    })
    server.addService(slowService, {
      Slow(_call: unknown, cb: grpc.sendUnaryData<Buffer>) {
        slowStarted()
        setTimeout(() => cb(null, Buffer.from('done')), 400)
      },
    })
    await health.refresh()
    const ready = watch(client, '')
    const db = watch(client, 'db')
    const live = watch(client, 'liveness')
    await Promise.all([ready.until('SERVING'), db.until('SERVING'), live.until('SERVING')])

    const t0 = performance.now()
    const done = health.shutdown({ drainDelayMs: 200 })
    const [r, d] = await Promise.all([ready.until('NOT_SERVING'), db.until('NOT_SERVING')])
    console.log(
      `drain: NOT_SERVING on Watch '' ${(r.at - t0).toFixed(2)} ms, 'db' ${(d.at - t0).toFixed(2)} ms after shutdown()`,
    )
    expect(await statuses(client, ['', 'db', 'cache', 'liveness'])).toEqual([
      'NOT_SERVING',
      'NOT_SERVING',
      'NOT_SERVING',
      'SERVING',
    ])
    // A call in flight when the server stops accepting still completes.
    const Slow = grpc.makeGenericClientConstructor(slowService, 'Slow')
    const slowClient = new Slow(`127.0.0.1:${await portOf(client)}`, grpc.credentials.createInsecure()) as any
    cleanup.push(() => slowClient.close())
    const slow = new Promise<string>((resolve, reject) =>
      slowClient.Slow(Buffer.alloc(0), (err: Error | null, res: Buffer) =>
        err ? reject(err) : resolve(String(res)),
      ),
    )
    await started
    const report = await done
    expect(await slow).toBe('done')
    expect(report.clean).toBe(true)
    expect(live.statuses()).toEqual(['SERVING'])
    expect([ready.ended, db.ended, live.ended]).toEqual([true, true, true])
  })
})

describe('options and dispose', () => {
  it('rejects bad arguments with E_CONFIG naming the field', async () => {
    const health = createHealth({ eventLoop: false, autoStart: false, checks: { db: () => true } })
    const server = new grpc.Server()
    const field = (f: () => unknown) => {
      try {
        f()
      } catch (err) {
        return (err as { code: string; details: { field: string } }).details.field
      }
    }
    expect(field(() => addHealthService(server, health, { livenessService: '' }))).toBe(
      'grpc.livenessService',
    )
    expect(field(() => addHealthService(server, health, { livenessService: 'db' }))).toBe(
      'grpc.livenessService',
    )
    expect(field(() => addHealthService(server, health, { livenesService: 'x' } as never))).toBe(
      'grpc.livenesService',
    )
    expect(field(() => addHealthService(server, health, { livenessWatchMs: 1 }))).toBe('grpc.livenessWatchMs')
    expect(field(() => addHealthService({} as grpc.Server, health))).toBe('server')
    expect(field(() => addHealthService(server, {} as Health))).toBe('health')
  })

  it('dispose() removes the service', async () => {
    const { client, disposable, health } = await setup()
    await health.refresh()
    expect(await check(client, '')).toBe('SERVING')
    disposable.dispose()
    await expect(check(client, '')).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED })
  })
})

const slowService: grpc.ServiceDefinition = {
  Slow: {
    path: '/test.Slow/Slow',
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  },
}

async function portOf(client: HealthClient): Promise<string> {
  return client.getChannel().getTarget().split(':').pop()!
}
