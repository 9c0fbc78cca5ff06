import { type Cache, createCache, type RedisErrorEvent } from '@resilient/cache'
import type { BreakerStateChange } from '@resilient/core'
import { afterEach, describe, expect, it } from 'vitest'
import { type FakeRedis, startFakeRedis } from './fake-redis.js'
import { pastTimer } from './support/helpers.js'

// Protocol edge cases against an in-process RESP server on port 0 (real sockets, real timers).

let fake: FakeRedis | undefined
let cache: Cache | undefined
afterEach(async () => {
  await cache?.close()
  await fake?.close()
  cache = undefined
  fake = undefined
})

async function until(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** Connected, and subscribed (its first subscription resyncs L1: fill L1 after it). */
function connected(c: Cache): boolean {
  const s = c.stats()
  return s.redisStatus === 'ready' && (s.pubsub === 'subscribed' || s.pubsub === 'none')
}

const TIMEOUT = 50
/** Past a bare timer: wide, as the first calls of a test file also compile the code they run. */
const SLACK = 150

describe('a Redis that accepts connections but never answers (like SIGSTOP)', () => {
  it('bounds every call by redisTimeoutMs, opens the breaker, then sends nothing more', async () => {
    fake = await startFakeRedis('hang')
    cache = createCache({
      redis: { host: '127.0.0.1', port: fake.port },
      namespace: 'hang',
      redisTimeoutMs: TIMEOUT,
      breaker: { volumeThreshold: 3, resetTimeoutMs: 60_000 },
    })
    const c = cache
    const changes: BreakerStateChange[] = []
    c.onBreakerStateChange((e) => changes.push(e))
    await until(() => connected(c))

    const past: number[] = []
    for (let i = 0; i < 6; i++) {
      past.push(
        await pastTimer(TIMEOUT, async () => expect(await c.getOrLoad(`k${i}`, async () => i)).toBe(i)),
      )
    }
    // The first calls wait out the Redis timeout (and not more); the rest skip Redis. Measured
    // against a bare timer of TIMEOUT started with each call (unit test files run in parallel on
    // 2 cores shared with other work: a 50 ms timer can take far longer here). An unbounded
    // client would wait forever; the tight bound (+20 ms, warmed up) is the integration test's.
    expect(Math.max(...past)).toBeLessThan(SLACK)
    expect(c.stats().breaker).toBe('open')
    expect(changes.map((e) => e.to)).toEqual(['open'])
    expect(c.stats().redisTimeouts).toBeGreaterThanOrEqual(3)

    const sentBefore = fake.commands.length
    const countedBefore = c.stats().redisCommands
    for (let i = 0; i < 50; i++) await c.getOrLoad(`open${i}`, async () => i)
    await c.flush()
    expect(fake.commands.length).toBe(sentBefore)
    expect(c.stats().redisCommands).toBe(countedBefore)
    expect(c.stats().redisSkipped).toBeGreaterThanOrEqual(50) // the lookup of each call
    expect(await c.check()).toMatchObject({ status: 'warn' })
    // writes that must reach Redis say they did not
    await expect(c.delete('k1')).rejects.toMatchObject({ code: 'E_CACHE_UNAVAILABLE' })
  })

  it('check() reports a hung Redis as warn within the timeout', async () => {
    fake = await startFakeRedis('hang')
    cache = createCache({ redis: { host: '127.0.0.1', port: fake.port }, redisTimeoutMs: TIMEOUT })
    const { check } = cache
    const c = cache
    await until(() => connected(c))
    let result: unknown
    expect(
      await pastTimer(TIMEOUT, async () => {
        result = await check()
      }),
    ).toBeLessThan(SLACK)
    expect(result).toEqual({ status: 'warn', output: 'redis ping timed out: serving from L1 and loaders' })
  })
})

describe('a Redis that answers garbage or errors', () => {
  it('garbage bytes: errors are counted and reported, callers still get the loader value', async () => {
    fake = await startFakeRedis('garbage')
    cache = createCache({
      redis: { host: '127.0.0.1', port: fake.port },
      namespace: 'garbage',
      redisTimeoutMs: TIMEOUT,
    })
    const c = cache
    const events: RedisErrorEvent[] = []
    c.onRedisError((e) => events.push(e))
    await until(() => connected(c))
    for (let i = 0; i < 5; i++) expect(await c.getOrLoad(`k${i}`, async () => `v${i}`)).toBe(`v${i}`)
    await c.flush()
    expect(events.length).toBeGreaterThan(0)
    const s = c.stats()
    expect(s.redisErrors + s.redisTimeouts + s.redisSkipped).toBeGreaterThan(0)
    expect(s.loads).toBe(5)
  })

  it('RESP errors count as failures and open the breaker', async () => {
    fake = await startFakeRedis('error')
    cache = createCache({
      redis: { host: '127.0.0.1', port: fake.port },
      namespace: 'errors',
      redisTimeoutMs: 1_000, // errors, not timeouts, are what this is about
      breaker: { volumeThreshold: 4, resetTimeoutMs: 60_000, consecutiveFailures: 0 }, // the window's rule alone
    })
    const c = cache
    await until(() => connected(c))
    for (let i = 0; i < 10; i++) expect(await c.getOrLoad(`k${i}`, async () => i)).toBe(i)
    await c.flush()
    expect(c.stats().redisErrors).toBeGreaterThanOrEqual(4)
    expect(c.stats().breaker).toBe('open')
    expect(await c.get('k1')).toBe(1) // L1 still serves
  })
})

describe('a Redis that answers lookups but fails other commands', () => {
  it('a tagged load whose tag registration failed is stored nowhere (a deleteByTag could not find it)', async () => {
    fake = await startFakeRedis('lookup-only')
    cache = createCache({
      redis: { host: '127.0.0.1', port: fake.port },
      namespace: 'partial',
      redisTimeoutMs: 1_000, // errors, not timeouts, are what this is about
      breaker: { volumeThreshold: 100 },
    })
    const c = cache
    const discarded: string[] = []
    c.onFillDiscarded((e) => discarded.push(e.reason))
    await until(() => connected(c))
    expect(await c.getOrLoad('tagged', async () => 'v', { tags: ['t'] })).toBe('v')
    expect(discarded).toEqual(['tag-registration-failed'])
    expect(await c.get('tagged')).toBeUndefined()
    // without tags the same failure leaves the value in L1 (the fill to Redis fails, and says so)
    expect(await c.getOrLoad('plain', async () => 'w')).toBe('w')
    await c.flush()
    expect(await c.get('plain')).toBe('w')
    expect(c.stats().redisErrors).toBeGreaterThanOrEqual(2)
  })
})

describe('a Redis that is not there', () => {
  it('skips Redis while disconnected: no waiting, no commands, no unhandled errors', async () => {
    fake = await startFakeRedis('hang')
    const port = fake.port
    await fake.close()
    fake = undefined
    cache = createCache({ redis: { host: '127.0.0.1', port }, redisTimeoutMs: TIMEOUT })
    const c = cache
    const t0 = performance.now()
    for (let i = 0; i < 20; i++) await c.getOrLoad(`k${i}`, async () => i)
    // 20 calls that each waited for Redis would take 20 x TIMEOUT = 1 s
    expect(performance.now() - t0).toBeLessThan(10 * TIMEOUT)
    expect(c.stats().redisCommands).toBe(0)
    expect((await c.check()).status).toBe('warn')
    // connection refusals are counted, never thrown as unhandled 'error' events
    await until(() => c.stats().connectionErrors > 0)
  })
})
