import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as grpc from '@grpc/grpc-js'
import { healthServiceDefinition } from '@resilient/health/grpc'
import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Service, start } from '../src/server.js'
import { LibraryService, RYW_KEY } from '../src/service.js'

// The gRPC example against a real 2-member Patroni cluster and Redis from the lab, in
// process, with real gRPC clients: the Library calls, grpc.health.v1 (Check and Watch) while
// Redis is paused, a primary kill under reads and writes, and the critical Postgres check
// failing once no member is left. About 50 s on 2 cores (the lab's boot and one failover).

const here = (p: string) => new URL(`../${p}`, import.meta.url)
let lab: Lab
let service: Service
let library: grpc.Client & Record<string, Function>
let health: grpc.Client & Record<string, Function>

beforeAll(async () => {
  lab = await startLab({ nodes: 2, redis: true })
  await lab.waitForReplicas(1)
  await lab.sql(readFileSync(here('schema.sql'), 'utf8'))
  await lab.sql(readFileSync(here('seed.sql'), 'utf8'))
  service = await start({
    port: 0,
    host: '127.0.0.1',
    patroni: { endpoints: lab.patroni.endpoints },
    connection: lab.postgres,
    poolMax: 4,
    redis: lab.redis,
    drainDelayMs: 200,
    adminPort: 0,
  })
  const creds = grpc.credentials.createInsecure()
  library = new LibraryService(service.address, creds) as unknown as typeof library
  const Health = grpc.makeGenericClientConstructor(healthServiceDefinition, 'Health')
  health = new Health(service.address, creds) as unknown as typeof health
  await until(async () => (await check('')) === 'SERVING', 20_000, 'SERVING')
})

afterAll(async () => {
  library?.close()
  health?.close()
  await service?.close({ drainDelayMs: 0 })
  await lab?.down()
})

async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

function check(service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    health.Check!(
      { service },
      { deadline: Date.now() + 5_000 },
      (err: Error | null, res: { status: string }) => (err ? reject(err) : resolve(res.status)),
    ),
  )
}

function watch(service: string) {
  const seen: string[] = []
  const stream = health.Watch!({ service }) as grpc.ClientReadableStream<{ status: string }>
  stream.on('data', (m) => seen.push(m.status))
  stream.on('error', () => {})
  return {
    seen,
    cancel: () => stream.cancel(),
    until: (status: string, timeoutMs = 20_000) =>
      until(async () => seen.includes(status), timeoutMs, `Watch(${service}) ${status}`),
  }
}

interface Reply<T> {
  value: T
  token: string | undefined
}

/** A unary call with an optional read-your-writes token; resolves the reply and the new token. */
function call<T>(method: string, request: object, token?: string, timeoutMs = 40_000): Promise<Reply<T>> {
  const md = new grpc.Metadata()
  if (token) md.set(RYW_KEY, token)
  return new Promise((resolve, reject) => {
    let newToken: string | undefined
    const c = library[method]!(
      request,
      md,
      { deadline: Date.now() + timeoutMs },
      (err: Error | null, value: T) => (err ? reject(err) : resolve({ value, token: newToken })),
    ) as grpc.ClientUnaryCall
    c.on('metadata', (m: grpc.Metadata) => {
      const v = m.get(RYW_KEY)[0]
      if (typeof v === 'string') newToken = v
    })
  })
}

describe('grpc.health.v1 and the admin listener', () => {
  it("answers '' (readiness), each check and liveness; the details only on the admin port", async () => {
    expect(await check('')).toBe('SERVING')
    expect(await check('postgres')).toBe('SERVING')
    expect(await check('redis')).toBe('SERVING')
    expect(await check('liveness')).toBe('SERVING')
    const primary = (await lab.primary())!.name
    const admin = (await (await fetch(`${service.admin!.url}/ready`)).json()) as any
    expect(admin.checks['postgres:discoveryAge'][0].componentId).toBe(primary)
    expect(await (await fetch(`${service.admin!.url}/metrics`)).text()).toMatch(/^resilient_health_ready 1$/m)
  })
})

describe('books and loans over gRPC', () => {
  it('reads books (cached), lends with read-your-writes, retries safely, returns', async () => {
    const book = (await call<any>('GetBook', { id: 42 })).value
    expect(book).toMatchObject({ id: 42, title: expect.any(String), author: expect.any(String) })
    const list = (await call<any>('ListBooks', { author: book.author })).value.books
    expect(list.find((b: any) => b.id === 42).available).toBe(book.available)

    const id = randomUUID()
    const lent = await call<any>('Lend', { id, bookId: 42, member: 'ada' })
    expect(lent.value).toMatchObject({
      created: true,
      loan: { id, bookId: 42, member: 'ada', returnedAt: '' },
    })
    expect(lent.token).toBeTruthy()
    const loan = await call<any>('GetLoan', { id }, lent.token)
    expect(loan.value.id).toBe(id)
    expect((await call<any>('GetBook', { id: 42 }, lent.token)).value.available).toBe(book.available - 1)
    // The same id again (a retry after an unknown outcome): the loan it already has.
    const again = await call<any>('Lend', { id, bookId: 42, member: 'ada' }, lent.token)
    expect(again.value.created).toBe(false)
    const back = await call<any>('Return', { id }, again.token)
    expect(back.value.returnedAt).not.toBe('')
    expect((await call<any>('GetBook', { id: 42 }, back.token)).value.available).toBe(book.available)
  })

  it('maps errors to gRPC status codes', async () => {
    await expect(call('GetBook', { id: 99999 })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND })
    await expect(call('GetBook', { id: -1 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT })
    await expect(call('Lend', { id: 'nope', bookId: 1, member: 'x' })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
    })
    const first = await call<any>('Lend', { id: randomUUID(), bookId: 5, member: 'bob' }) // 1 copy
    expect(first.value.created).toBe(true)
    await expect(call('Lend', { id: randomUUID(), bookId: 5, member: 'eve' })).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
    })
  })
})

describe('Redis paused', () => {
  it("Watch('redis') turns NOT_SERVING (cache.check warns) and back; '' stays SERVING; books still served", async () => {
    await call('GetBook', { id: 11 })
    const ready = watch('')
    const redis = watch('redis')
    await redis.until('SERVING')
    await lab.pauseRedis()
    try {
      expect((await call<any>('GetBook', { id: 11 })).value.id).toBe(11)
      await redis.until('NOT_SERVING')
    } finally {
      await lab.resumeRedis()
    }
    await until(async () => redis.seen.at(-1) === 'SERVING', 20_000, 'redis SERVING again')
    expect(ready.seen).toEqual(['SERVING'])
    ready.cancel()
    redis.cancel()
  })
})

describe('primary killed', () => {
  it('reads never fail, writes resume on the new primary; then with no member left, postgres and readiness turn NOT_SERVING', async () => {
    const ids = Array.from({ length: 40 }, (_, i) => i + 100)
    let running = true
    let reads = 0
    const readErrors: string[] = []
    const readers = Array.from({ length: 4 }, async (_, w) => {
      let i = w
      while (running) {
        try {
          await call('GetBook', { id: ids[i++ % ids.length] }, undefined, 30_000)
          reads++
        } catch (err) {
          readErrors.push((err as Error).message)
        }
      }
    })
    const writes: { at: number; ok: boolean; error?: string }[] = []
    const writer = (async () => {
      while (running) {
        const id = randomUUID()
        // A client retries UNAVAILABLE with the same id (safe: the id makes a re-run harmless).
        for (let attempt = 0; attempt < 5; attempt++) {
          try {
            await call('Lend', { id, bookId: 200 + (writes.length % 100), member: 'kim' }, undefined, 40_000)
            writes.push({ at: Date.now(), ok: true })
            break
          } catch (err) {
            const e = err as grpc.ServiceError
            writes.push({ at: Date.now(), ok: false, error: e.message })
            if (e.code !== grpc.status.UNAVAILABLE) break
          }
        }
        await new Promise((r) => setTimeout(r, 50))
      }
    })()
    await new Promise((r) => setTimeout(r, 1_000))
    const killed = await lab.killPrimary()
    const killedAt = Date.now()
    const next = await lab.waitForPrimary({ not: killed, timeoutMs: 60_000 })
    // Writes resume: at least 3 acknowledged after the new primary is known.
    const promotedAt = Date.now()
    await until(
      async () => writes.filter((w) => w.ok && w.at > promotedAt).length >= 3,
      40_000,
      'writes resume',
    )
    running = false
    await Promise.all([...readers, writer])
    const firstAfter = writes.find((w) => w.ok && w.at > killedAt)
    console.log(
      `primary ${killed} killed: ${reads} reads, ${readErrors.length} failed; ${writes.filter((w) => w.ok).length} writes ok, ${writes.filter((w) => !w.ok).length} attempts failed; first write acknowledged ${firstAfter ? firstAfter.at - killedAt : 'n/a'} ms after the kill (new primary ${next.name})`,
    )
    expect(readErrors).toEqual([])
    expect(reads).toBeGreaterThan(50)

    // The last member stops: the critical postgres check fails, readiness follows.
    const ready = watch('')
    const postgres = watch('postgres')
    await ready.until('SERVING')
    await lab.stopMember(next.name)
    await postgres.until('NOT_SERVING', 30_000)
    await ready.until('NOT_SERVING', 5_000)
    expect(await check('liveness')).toBe('SERVING') // the process itself is fine
    ready.cancel()
    postgres.cancel()
  })
})
