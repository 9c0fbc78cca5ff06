import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
// @ts-expect-error plain JavaScript example, no type declarations
import { start } from '../src/server.js'

// The Fastify example against a real 2-member Patroni cluster and Redis from the lab, in
// process. About 20 s on 2 cores, most of it the lab's boot.

const here = (p: string) => new URL(`../${p}`, import.meta.url)
let lab: Lab
let service: {
  url: string
  admin: { url: string }
  close: (o?: { drainDelayMs?: number }) => Promise<unknown>
}

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
    drainDelayMs: 300,
    exposeDebug: true,
    adminPort: 0,
  })
  await until(async () => (await get('/ready')).status === 200, 20_000, 'ready')
})

afterAll(async () => {
  await service?.close({ drainDelayMs: 0 })
  await lab?.down()
})

async function get(path: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${service.url}${path}`, { headers, signal: AbortSignal.timeout(10_000) })
  const text = await res.text()
  return { status: res.status, headers: res.headers, text, json: text ? safeJson(text) : undefined }
}

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${service.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(40_000),
  })
  const text = await res.text()
  return { status: res.status, headers: res.headers, text, json: text ? safeJson(text) : undefined }
}

function safeJson(text: string): any {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const cacheStats = async () =>
  (await get('/debug/stats')).json.cache as { hits: number; misses: number; stale: number }

describe('probes', () => {
  it('answers liveness, readiness (health+json, pass) and Prometheus metrics', async () => {
    expect((await get('/healthz')).status).toBe(200)
    const ready = await get('/ready')
    expect(ready.status).toBe(200)
    expect(ready.headers.get('content-type')).toContain('application/health+json')
    expect(ready.json.status).toBe('pass')
    // Outsiders get statuses only; member names and metrics are on the admin port.
    expect(ready.json).toEqual({
      status: 'pass',
      checks: { postgres: [{ status: 'pass' }], redis: [{ status: 'pass' }] },
    })
    expect((await get('/ready?verbose=1')).text).toBe(ready.text)
    expect((await get('/metrics')).status).toBe(404)
    const admin = await fetch(`${service.admin.url}/ready`)
    const primary = (await lab.primary())!.name
    expect(((await admin.json()) as any).checks['postgres:discoveryAge'][0].componentId).toBe(primary)
    const metrics = await fetch(`${service.admin.url}/metrics`)
    expect(metrics.status).toBe(200)
    expect(await metrics.text()).toMatch(/^resilient_health_ready 1$/m)
  })
})

describe('books', () => {
  it('GET /books/:id loads once, then serves from the cache', async () => {
    const first = await get('/books/7')
    expect(first.status).toBe(200)
    expect(first.json).toMatchObject({ id: 7, title: expect.any(String), author: expect.any(String) })
    const before = await cacheStats()
    const second = await get('/books/7')
    expect(second.json).toEqual(first.json)
    const after = await cacheStats()
    expect(after.hits).toBe(before.hits + 1)
    expect(after.misses).toBe(before.misses)
  })

  it('GET /books/:id answers 404 for a missing book and 400 for a malformed id', async () => {
    expect((await get('/books/99999')).json).toMatchObject({ error: 'NOT_FOUND' })
    expect((await get('/books/99999')).status).toBe(404)
    const bad = await get('/books/abc')
    expect(bad.status).toBe(400)
    expect(bad.json.error).toBe('BAD_REQUEST')
  })

  it('GET /books?author= lists that author (case-insensitive), 400 without author', async () => {
    const res = await get(`/books?author=${encodeURIComponent('jane austen')}`)
    expect(res.status).toBe(200)
    expect(res.json).toHaveLength(10)
    for (const b of res.json) expect(b.author).toBe('Jane Austen')
    expect((await get('/books')).status).toBe(400)
  })
})

describe('loans', () => {
  it('lends with a transaction, invalidates the cache and honours the read-your-writes token', async () => {
    const bookId = 42
    const before = (await get(`/books/${bookId}`)).json
    // Warm the author list so that its invalidation (deleteByTag) is observable.
    const list = await get(`/books?author=${encodeURIComponent(before.author)}`)
    expect(list.json.find((b: any) => b.id === bookId).available).toBe(before.available)

    const id = randomUUID()
    const lent = await post('/loans', { id, bookId, member: 'ada' })
    expect(lent.status).toBe(201)
    expect(lent.json).toMatchObject({ id, bookId, member: 'ada', returnedAt: null })
    const token = lent.headers.get('x-ryw-token')
    expect(token).toBeTruthy()

    // With the token: the loan and the new availability, at once, whichever member answers.
    const loan = await get(`/loans/${id}`, { 'x-ryw-token': token! })
    expect(loan.status).toBe(200)
    expect(loan.json.id).toBe(id)
    const book = await get(`/books/${bookId}`, { 'x-ryw-token': token! })
    expect(book.json.available).toBe(before.available - 1)

    // Without the token: the cache entries were deleted, so once the replica has replayed
    // the write every reader sees it (no waiting for the 60 s TTL).
    await until(
      async () => (await get(`/books/${bookId}`)).json.available === before.available - 1,
      5000,
      'book',
    )
    await until(
      async () =>
        (await get(`/books?author=${encodeURIComponent(before.author)}`)).json.find(
          (b: any) => b.id === bookId,
        ).available ===
        before.available - 1,
      5000,
      'author list',
    )

    // The same loan id again (a client retrying after an unknown outcome): the loan it
    // already has, not a second copy lent.
    const again = await post('/loans', { id, bookId, member: 'ada' }, { 'x-ryw-token': token! })
    expect(again.status).toBe(200)
    expect(again.json.id).toBe(id)
    const after = await get(`/books/${bookId}`, { 'x-ryw-token': again.headers.get('x-ryw-token')! })
    expect(after.json.available).toBe(before.available - 1)

    // Giving it back, twice: one copy back.
    const back = await post(`/loans/${id}/return`, {}, { 'x-ryw-token': token! })
    expect(back.status).toBe(200)
    expect(back.json.returnedAt).not.toBeNull()
    const backAgain = await post(
      `/loans/${id}/return`,
      {},
      { 'x-ryw-token': back.headers.get('x-ryw-token')! },
    )
    expect(backAgain.status).toBe(200)
    const restored = await get(`/books/${bookId}`, { 'x-ryw-token': backAgain.headers.get('x-ryw-token')! })
    expect(restored.json.available).toBe(before.available)
  })

  it('answers 409 when every copy is on loan, and rolls that attempt back', async () => {
    const bookId = 5 // seeded with 1 copy
    const first = await post('/loans', { id: randomUUID(), bookId, member: 'bob' })
    expect(first.status).toBe(201)
    const refusedId = randomUUID()
    const second = await post('/loans', { id: refusedId, bookId, member: 'eve' })
    expect(second.status).toBe(409)
    expect(second.json.error).toBe('NOT_AVAILABLE')
    const token = second.headers.get('x-ryw-token') ?? first.headers.get('x-ryw-token')!
    expect((await get(`/loans/${refusedId}`, { 'x-ryw-token': token })).status).toBe(404)
  })

  it('rejects malformed input with 400', async () => {
    expect((await post('/loans', { id: 'not-a-uuid', bookId: 1, member: 'x' })).status).toBe(400)
    expect((await post('/loans', { id: randomUUID(), bookId: -1, member: 'x' })).status).toBe(400)
    expect((await post('/loans', { id: randomUUID(), bookId: 1 })).status).toBe(400)
    const broken = await post('/loans', '{"id": ')
    expect(broken.status).toBe(400)
    expect(broken.json.error).toBe('BAD_REQUEST')
    expect((await post('/loans', { id: randomUUID(), bookId: 99999, member: 'x' })).status).toBe(404)
  })
})

describe('Redis paused', () => {
  it('stays ready (Redis is not critical) and keeps serving cached books', async () => {
    const warm = await get('/books/11')
    expect(warm.status).toBe(200)
    await lab.pauseRedis()
    try {
      const res = await get('/books/11')
      expect(res.status).toBe(200)
      expect(res.json).toEqual(warm.json)
      // A book never read before: Redis cannot answer, Postgres can.
      expect((await get('/books/12')).status).toBe(200)
      // The redis check fails within its timeout; readiness turns 'warn', still 200.
      await until(async () => (await get('/ready')).json?.status === 'warn', 10_000, 'readiness warn')
      expect((await get('/ready')).status).toBe(200)
    } finally {
      await lab.resumeRedis()
    }
    await until(async () => (await get('/ready')).json?.status === 'pass', 15_000, 'readiness pass again')
  })
})

describe('shutdown', () => {
  it('fails readiness at once, then drains and closes', async () => {
    const closing = service.close({ drainDelayMs: 300 })
    const during = await get('/ready')
    expect(during.status).toBe(503)
    await closing
    await expect(fetch(`${service.url}/healthz`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow()
  })
})
