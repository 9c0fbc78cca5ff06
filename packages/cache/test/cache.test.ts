import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { type Cache, channelNames, createCache, type StaleEvent } from '@resilient/cache'
import { ResilientError } from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

// L1-only caches (redis: false): the read path, stampede, grace and race rules, without servers.

function deferred<T>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

let cache: Cache
afterEach(async () => {
  vi.useRealTimers()
  await cache?.close()
})

describe('getOrLoad', () => {
  it('loads on a miss, then answers from L1, and counts both', async () => {
    cache = createCache({ redis: false })
    const loader = vi.fn(async () => ({ id: 1 }))
    expect(await cache.getOrLoad('a', loader)).toEqual({ id: 1 })
    expect(await cache.getOrLoad('a', loader)).toEqual({ id: 1 })
    expect(loader).toHaveBeenCalledTimes(1)
    expect(cache.stats()).toMatchObject({ hits: 1, hitsL1: 1, misses: 1, loads: 1, l1Items: 1 })
    expect(await cache.get('a')).toEqual({ id: 1 })
  })

  it('calls the loader once for 1,000 concurrent misses on one key', async () => {
    cache = createCache({ redis: false })
    const gate = deferred<string>()
    let calls = 0
    const loader = () => {
      calls++
      return gate.promise
    }
    const all = Promise.all(Array.from({ length: 1000 }, () => cache.getOrLoad('hot', loader)))
    gate.resolve('v')
    const values = await all
    expect(calls).toBe(1)
    expect(new Set(values)).toEqual(new Set(['v']))
    expect(cache.stats()).toMatchObject({ loads: 1, misses: 1000 })
  })

  it('runs many loads at once without an EventTarget listener warning', async () => {
    cache = createCache({ redis: false })
    const warnings: Error[] = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on('warning', onWarning)
    try {
      const gate = deferred<number>()
      const all = Promise.all(
        Array.from({ length: 50 }, (_, i) => cache.getOrLoad(`k${i}`, () => gate.promise)),
      )
      gate.resolve(1)
      await all
      await new Promise((r) => setImmediate(r))
    } finally {
      process.off('warning', onWarning)
    }
    expect(warnings.map((w) => w.name)).not.toContain('MaxListenersExceededWarning')
  })

  it('caches null (negative caching)', async () => {
    cache = createCache({ redis: false })
    const loader = vi.fn(async () => null)
    expect(await cache.getOrLoad('missing', loader)).toBeNull()
    expect(await cache.getOrLoad('missing', loader)).toBeNull()
    expect(loader).toHaveBeenCalledTimes(1)
  })

  it('wraps a loader failure in E_LOADER with the cause, and does not cache it', async () => {
    cache = createCache({ redis: false })
    const boom = new Error('db down')
    const errors: unknown[] = []
    cache.onLoaderError((e) => errors.push(e.error))
    const err = await cache.getOrLoad('k', () => Promise.reject(boom)).catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_LOADER')).toBe(true)
    expect((err as Error).cause).toBe(boom)
    expect(errors).toEqual([boom])
    expect(await cache.getOrLoad('k', () => 'ok')).toBe('ok')
    expect(cache.stats()).toMatchObject({ loads: 2, loaderErrors: 1 })
  })

  it('a synchronous throw in the loader is E_LOADER too', async () => {
    cache = createCache({ redis: false })
    const err = await cache
      .getOrLoad('k', () => {
        throw new TypeError('bug')
      })
      .catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_LOADER')).toBe(true)
    expect((err as Error).cause).toBeInstanceOf(TypeError)
  })

  it('lets one caller stop waiting (E_ABORTED) while the shared load goes on for the others', async () => {
    cache = createCache({ redis: false })
    const gate = deferred<number>()
    const ac = new AbortController()
    const first = cache.getOrLoad('k', () => gate.promise, { signal: ac.signal })
    const second = cache.getOrLoad('k', () => Promise.resolve(-1))
    ac.abort()
    const err = await first.catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_ABORTED')).toBe(true)
    gate.resolve(7)
    expect(await second).toBe(7)
    expect(await cache.get('k')).toBe(7)
  })

  it('publishes hit, miss and load on diagnostics channels, without values', async () => {
    cache = createCache({ redis: false, namespace: 'chan' })
    const seen: [string, unknown][] = []
    const names = [channelNames.hit, channelNames.miss, channelNames.load]
    const fns = names.map((name) => {
      const fn = (msg: unknown) => seen.push([name, msg])
      subscribe(name, fn)
      return fn
    })
    try {
      await cache.getOrLoad('k', () => 'secret-value')
      await cache.getOrLoad('k', () => 'secret-value')
    } finally {
      names.forEach((name, i) => {
        unsubscribe(name, fns[i]!)
      })
    }
    expect(seen.map(([n]) => n)).toEqual([channelNames.miss, channelNames.load, channelNames.hit])
    expect(seen[2]![1]).toEqual({ namespace: 'chan', key: 'k', layer: 'l1' })
    expect(JSON.stringify(seen)).not.toContain('secret-value')
  })
})

describe('TTL and grace (fake timers)', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] })
  })

  it('reloads after ttlMs', async () => {
    cache = createCache({ redis: false, ttlMs: 1_000 })
    let n = 0
    const loader = async () => ++n
    expect(await cache.getOrLoad('k', loader)).toBe(1)
    vi.advanceTimersByTime(999)
    expect(await cache.getOrLoad('k', loader)).toBe(1)
    vi.advanceTimersByTime(2)
    expect(await cache.getOrLoad('k', loader)).toBe(2)
  })

  it('serves the stale value when the loader fails within grace, and says so', async () => {
    cache = createCache({ redis: false, ttlMs: 1_000, graceMs: 60_000 })
    const stale: StaleEvent[] = []
    cache.onStale((e) => stale.push(e))
    await cache.getOrLoad('k', async () => 'v1')
    vi.advanceTimersByTime(5_000)
    expect(await cache.getOrLoad('k', () => Promise.reject(new Error('db down')))).toBe('v1')
    expect(stale).toHaveLength(1)
    expect(stale[0]).toMatchObject({ key: 'k', reason: 'loader-error', ageMs: 4_000 })
    expect(cache.stats()).toMatchObject({ stale: 1, loaderErrors: 1 })
    // a later successful load replaces it
    expect(await cache.getOrLoad('k', async () => 'v2')).toBe('v2')
  })

  it('does not serve a value past ttl + grace: the error surfaces', async () => {
    cache = createCache({ redis: false, ttlMs: 1_000, graceMs: 1_000 })
    await cache.getOrLoad('k', async () => 'v1')
    vi.advanceTimersByTime(2_001)
    const err = await cache
      .getOrLoad('k', () => Promise.reject(new Error('db down')))
      .catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_LOADER')).toBe(true)
  })

  it('soft timeout: serves stale at the soft limit, stores the late value when it arrives', async () => {
    cache = createCache({
      redis: false,
      ttlMs: 1_000,
      graceMs: 60_000,
      loaderTimeoutMs: { soft: 50, hard: 5_000 },
    })
    await cache.getOrLoad('k', async () => 'v1')
    vi.advanceTimersByTime(2_000)
    const slow = deferred<string>()
    const reasons: string[] = []
    cache.onStale((e) => reasons.push(e.reason))
    const p = cache.getOrLoad('k', () => slow.promise)
    await vi.advanceTimersByTimeAsync(50)
    expect(await p).toBe('v1')
    expect(reasons).toEqual(['soft-timeout'])
    // a caller arriving while the background load runs joins it: no second loader call
    const extra = vi.fn(async () => 'never')
    expect(await cache.getOrLoad('k', extra)).toBe('v1')
    expect(extra).not.toHaveBeenCalled()
    slow.resolve('v2')
    await cache.flush()
    expect(await cache.getOrLoad('k', extra)).toBe('v2')
    expect(extra).not.toHaveBeenCalled()
  })

  it('hard timeout without a stale value: E_TIMEOUT, and the loader signal aborts', async () => {
    cache = createCache({ redis: false, loaderTimeoutMs: { hard: 200 } })
    let signal: AbortSignal | undefined
    const p = cache
      .getOrLoad('k', (ctx) => {
        signal = ctx.signal
        return new Promise<string>(() => {})
      })
      .catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(200)
    const err = await p
    expect(ResilientError.is(err, 'E_TIMEOUT')).toBe(true)
    expect(signal?.aborted).toBe(true)
    expect(cache.stats()).toMatchObject({ loaderTimeouts: 1 })
  })

  it('hard timeout for a loader that never asks for ctx.signal: E_TIMEOUT too (no AbortController made)', async () => {
    cache = createCache({ redis: false, loaderTimeoutMs: { hard: 200 } })
    const p = cache.getOrLoad('k', () => new Promise<string>(() => {})).catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(199)
    expect(cache.stats().loaderTimeouts).toBe(0)
    await vi.advanceTimersByTimeAsync(1)
    expect(ResilientError.is(await p, 'E_TIMEOUT')).toBe(true)
  })

  it('hard timeout with a stale value serves it (reason hard-timeout)', async () => {
    cache = createCache({ redis: false, ttlMs: 100, graceMs: 10_000, loaderTimeoutMs: { hard: 200 } })
    await cache.getOrLoad('k', async () => 'old')
    vi.advanceTimersByTime(150)
    const reasons: string[] = []
    cache.onStale((e) => reasons.push(e.reason))
    const p = cache.getOrLoad('k', () => new Promise<string>(() => {}))
    await vi.advanceTimersByTimeAsync(200)
    expect(await p).toBe('old')
    expect(reasons).toEqual(['hard-timeout'])
  })
})

describe('invalidation and the race rule (in process)', () => {
  it('a load that raced with delete() is returned but not stored', async () => {
    cache = createCache({ redis: false })
    const gate = deferred<string>()
    const discarded: string[] = []
    cache.onFillDiscarded((e) => discarded.push(e.reason))
    const p = cache.getOrLoad('k', () => gate.promise)
    await cache.delete('k')
    gate.resolve('read-before-the-write')
    expect(await p).toBe('read-before-the-write')
    expect(await cache.get('k')).toBeUndefined()
    expect(discarded).toEqual(['invalidated'])
    // a caller after the delete does not join the old load
    expect(await cache.getOrLoad('k', async () => 'fresh')).toBe('fresh')
  })

  it('a caller arriving after delete() starts a new load instead of joining the old one', async () => {
    cache = createCache({ redis: false })
    const gate = deferred<string>()
    const p1 = cache.getOrLoad('k', () => gate.promise)
    await cache.delete('k')
    const p2 = cache.getOrLoad('k', async () => 'after')
    gate.resolve('before')
    expect(await p1).toBe('before')
    expect(await p2).toBe('after')
    expect(await cache.get('k')).toBe('after')
  })

  it('set() supersedes an in-flight load of the key', async () => {
    cache = createCache({ redis: false })
    const gate = deferred<string>()
    const p = cache.getOrLoad('k', () => gate.promise)
    await cache.set('k', 'written')
    gate.resolve('loaded-earlier')
    await p
    expect(await cache.get('k')).toBe('written')
  })

  it('deleteByTag drops tagged entries and in-flight tagged loads, and keeps the rest', async () => {
    cache = createCache({ redis: false })
    await cache.getOrLoad('a', async () => 1, { tags: ['books'] })
    await cache.set('b', 2, { tags: ['books', 'authors'] })
    await cache.set('c', 3, { tags: ['authors'] })
    const gate = deferred<number>()
    const p = cache.getOrLoad('d', () => gate.promise, { tags: ['books'] })
    expect(await cache.deleteByTag('books')).toBe(3)
    gate.resolve(4)
    expect(await p).toBe(4)
    expect(await cache.get('a')).toBeUndefined()
    expect(await cache.get('b')).toBeUndefined()
    expect(await cache.get('d')).toBeUndefined()
    expect(await cache.get('c')).toBe(3)
  })

  it('L1 evicts least recently used past maxItems', async () => {
    cache = createCache({ redis: false, l1: { maxItems: 2 } })
    await cache.set('a', 1)
    await cache.set('b', 2)
    await cache.get('a')
    await cache.set('c', 3)
    expect(await cache.get('b')).toBeUndefined()
    expect(await cache.get('a')).toBe(1)
    expect(cache.stats().l1Items).toBe(2)
  })

  it('L1 has a byte bound by default: 100 values of 1 MB do not all stay in memory (defect 10)', async () => {
    cache = createCache({ redis: false })
    const big = 'x'.repeat(1_000_000)
    for (let i = 0; i < 100; i++) await cache.getOrLoad(`big${i}`, async () => big)
    const items = cache.stats().l1Items
    expect(items).toBeGreaterThan(0)
    expect(items * 1_000_002).toBeLessThanOrEqual(64 * 1024 * 1024)
  })

  it('L1 honours maxBytes (serialized size)', async () => {
    cache = createCache({ redis: false, l1: { maxItems: 100, maxBytes: 30 } })
    await cache.set('a', 'x'.repeat(12)) // 14 bytes as JSON
    await cache.set('b', 'y'.repeat(12))
    await cache.set('c', 'z'.repeat(12))
    expect(cache.stats().l1Items).toBe(2)
    expect(await cache.get('a')).toBeUndefined()
  })
})

describe('lifecycle and health', () => {
  it('check() works unbound and passes for an L1-only cache', async () => {
    cache = createCache({ redis: false })
    const { check } = cache
    expect(await check()).toMatchObject({ status: 'pass' })
  })

  it('close() refuses later calls with E_SHUTTING_DOWN and aborts running loads', async () => {
    cache = createCache({ redis: false })
    let signal: AbortSignal | undefined
    const p = cache
      .getOrLoad('k', (ctx) => {
        signal = ctx.signal
        return new Promise(() => {})
      })
      .catch((e: unknown) => e)
    await cache.close()
    const err = await p
    expect(ResilientError.is(err, 'E_SHUTTING_DOWN')).toBe(true)
    expect(signal?.aborted).toBe(true)
    await expect(cache.getOrLoad('k', () => 1)).rejects.toMatchObject({ code: 'E_SHUTTING_DOWN' })
    expect((await cache.check()).status).toBe('warn')
  })

  it('close() leaves no timer behind: a running load’s hard timeout does not keep the process alive (defect 10)', async () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
    const before = timers()
    cache = createCache({ redis: false, loaderTimeoutMs: { hard: 60_000 } })
    const p = cache.getOrLoad('k', () => new Promise(() => {})).catch((e: unknown) => e)
    const q = cache
      .getOrLoad(
        'k2',
        (ctx) =>
          new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
      )
      .catch((e: unknown) => e)
    expect(timers()).toBeGreaterThan(before)
    await cache.close()
    expect(ResilientError.is(await p, 'E_SHUTTING_DOWN')).toBe(true)
    expect(ResilientError.is(await q, 'E_SHUTTING_DOWN')).toBe(true)
    expect(timers()).toBe(before)
  })

  it('close() settles a running load that took no signal with E_SHUTTING_DOWN', async () => {
    cache = createCache({ redis: false })
    const p = cache.getOrLoad('k', () => new Promise(() => {})).catch((e: unknown) => e)
    await cache.close()
    expect(ResilientError.is(await p, 'E_SHUTTING_DOWN')).toBe(true)
  })
})
