import { inspect } from 'node:util'
import { createCache, DEFAULT_CACHE_OPTIONS } from '@resilient/cache'
import { ResilientError } from '@resilient/core'
import { Cluster, Redis } from 'ioredis'
import { afterEach, describe, expect, it } from 'vitest'

function configErrorOf(fn: () => unknown): ResilientError {
  try {
    fn()
  } catch (err) {
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    return err as ResilientError
  }
  throw new Error('expected E_CONFIG')
}

const NO_CLUSTER_RETRIES = { retryDelayOnFailover: 0, retryDelayOnClusterDown: 0, retryDelayOnTryAgain: 0 }

const clients: { disconnect(): void }[] = []
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect()
})

describe('createCache options', () => {
  it('exports frozen defaults that match the README', () => {
    expect(DEFAULT_CACHE_OPTIONS.redisTimeoutMs).toBe(100)
    expect(DEFAULT_CACHE_OPTIONS.ttlMs).toBe(60_000)
    expect(DEFAULT_CACHE_OPTIONS.graceMs).toBe(0)
    expect(DEFAULT_CACHE_OPTIONS.l1).toEqual({ maxItems: 10_000, maxBytes: 67_108_864 })
    expect(DEFAULT_CACHE_OPTIONS.loaderTimeoutMs).toEqual({ soft: 0, hard: 30_000 })
    expect(DEFAULT_CACHE_OPTIONS.reconnectAfterTimeouts).toBe(3)
    expect(DEFAULT_CACHE_OPTIONS.heartbeatMs).toBe(1_000)
    expect(DEFAULT_CACHE_OPTIONS.floorTtlMs).toBe(300_000)
    expect(Object.isFrozen(DEFAULT_CACHE_OPTIONS)).toBe(true)
  })

  it.each([
    [{}, 'cache.redis'],
    [{ redis: 'redis://x' }, 'cache.redis'],
    [{ redis: false, ttlMs: -1 }, 'cache.ttlMs'],
    [{ redis: false, ttlMs: 1.5 }, 'cache.ttlMs'],
    [{ redis: false, graceMs: 'long' }, 'cache.graceMs'],
    [{ redis: false, l1: { maxItems: 0 } }, 'cache.l1.maxItems'],
    [{ redis: false, l1: { maxItem: 5 } }, 'cache.l1.maxItem'],
    [{ redis: false, redisTimeoutMs: 0 }, 'cache.redisTimeoutMs'],
    [{ redis: false, namespce: 'x' }, 'cache.namespce'],
    [{ redis: false, namespace: '' }, 'cache.namespace'],
    [{ redis: false, namespace: 'a{b}' }, 'cache.namespace'],
    [{ redis: false, breaker: { timeoutMs: 5 } }, 'cache.breaker.timeoutMs'],
    [{ redis: false, breaker: { volumeThreshold: -1 } }, 'breaker.volumeThreshold'],
    [{ redis: false, serializer: { serialize: JSON.stringify } }, 'cache.serializer.deserialize'],
    [{ redis: false, lease: true }, 'cache.lease'],
    [{ redis: false, loaderTimeoutMs: { soft: 500, hard: 500 } }, 'cache.loaderTimeoutMs.soft'],
    [{ redis: false, loaderTimeoutMs: { hard: 0 } }, 'cache.loaderTimeoutMs.hard'],
    [{ redis: false, maxKeyLength: 0 }, 'cache.maxKeyLength'],
    [{ redis: { host: '127.0.0.1', port: 1, commandTimeout: 5_000 } }, 'cache.redis.commandTimeout'],
    [{ redis: { host: '127.0.0.1', port: 1, enableOfflineQueue: true } }, 'cache.redis.enableOfflineQueue'],
    [{ redis: { sentinels: [{ host: '127.0.0.1', port: 1 }] } }, 'cache.redis.name'],
    [{ redis: false, reconnectAfterTimeouts: -1 }, 'cache.reconnectAfterTimeouts'],
    [{ redis: false, heartbeatMs: 0 }, 'cache.heartbeatMs'],
    [{ redis: false, floorTtlMs: 0 }, 'cache.floorTtlMs'],
  ])('refuses %j naming %s', (options, field) => {
    const err = configErrorOf(() => createCache(options as never))
    expect(err.message).toContain(field)
  })

  it('never echoes a string value, so a misplaced password cannot leak', () => {
    const err = configErrorOf(() => createCache({ redis: false, namespace: 's3cret-password-{x}' }))
    expect(err.message).not.toContain('s3cret')
    const err2 = configErrorOf(() => createCache({ redis: false, ttlMs: 's3cret' as never }))
    expect(err2.message).not.toContain('s3cret')
  })

  it('refuses a caller client that can queue or wait without bound, naming the option', () => {
    const queued = new Redis({ lazyConnect: true })
    clients.push(queued)
    expect(configErrorOf(() => createCache({ redis: queued })).message).toContain('enableOfflineQueue')

    const noTimeout = new Redis({ lazyConnect: true, enableOfflineQueue: false })
    clients.push(noTimeout)
    expect(configErrorOf(() => createCache({ redis: noTimeout })).message).toContain('commandTimeout')

    const slow = new Redis({ lazyConnect: true, enableOfflineQueue: false, commandTimeout: 60_000 })
    clients.push(slow)
    expect(configErrorOf(() => createCache({ redis: slow })).message).toContain('commandTimeout')

    const resend = new Redis({ lazyConnect: true, enableOfflineQueue: false, commandTimeout: 100 })
    clients.push(resend)
    expect(configErrorOf(() => createCache({ redis: resend })).message).toContain(
      'autoResendUnfulfilledCommands',
    )

    const forever = new Redis({
      lazyConnect: true,
      enableOfflineQueue: false,
      commandTimeout: 100,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: null,
    })
    clients.push(forever)
    expect(configErrorOf(() => createCache({ redis: forever })).message).toContain('maxRetriesPerRequest')
  })

  it('checks a caller Cluster: its own offline queue and its redisOptions', () => {
    const c1 = new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true })
    clients.push(c1)
    expect(configErrorOf(() => createCache({ redis: c1 })).message).toContain('Cluster) enableOfflineQueue')
    const c2 = new Cluster([{ host: '127.0.0.1', port: 1 }], {
      lazyConnect: true,
      enableOfflineQueue: false,
      ...NO_CLUSTER_RETRIES,
    })
    clients.push(c2)
    expect(configErrorOf(() => createCache({ redis: c2 })).message).toContain('redisOptions commandTimeout')
  })

  // Defect 9: ioredis's Cluster resends a command after TRYAGAIN, CLUSTERDOWN or a closed
  // connection (100 ms later by default): a SET could land after the cache told its caller it
  // failed, and after a delete. A caller's Cluster must turn those off.
  it.each(['retryDelayOnFailover', 'retryDelayOnClusterDown', 'retryDelayOnTryAgain'])(
    'refuses a caller Cluster that would resend commands later: %s',
    (name) => {
      const cluster = new Cluster([{ host: '127.0.0.1', port: 1 }], {
        lazyConnect: true,
        enableOfflineQueue: false,
        redisOptions: { commandTimeout: 100, autoResendUnfulfilledCommands: false, maxRetriesPerRequest: 0 },
        ...NO_CLUSTER_RETRIES,
        [name]: 100,
      })
      clients.push(cluster)
      const err = configErrorOf(() => createCache({ redis: cluster }))
      expect(err.message).toContain(`cache.redis (your Cluster) ${name}`)
    },
  )

  it('accepts a well-configured caller client and does not close it', async () => {
    const ok = new Redis({
      lazyConnect: true,
      enableOfflineQueue: false,
      commandTimeout: 100,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
    })
    clients.push(ok)
    const cache = createCache({ redis: ok, l1: false })
    await cache.close()
    expect(ok.status).toBe('wait') // untouched: still the caller's, never connected or quit by us
  })

  it('accepts a well-configured caller Cluster, and closes only its own subscriber', async () => {
    const cluster = new Cluster([{ host: '127.0.0.1', port: 1 }], {
      lazyConnect: true,
      enableOfflineQueue: false,
      redisOptions: { commandTimeout: 100, autoResendUnfulfilledCommands: false, maxRetriesPerRequest: 0 },
      ...NO_CLUSTER_RETRIES,
    })
    clients.push(cluster)
    const cache = createCache({ redis: cluster, namespace: 'cl' })
    // nothing reachable: reads skip Redis and load
    expect(await cache.getOrLoad('k', async () => 'v')).toBe('v')
    expect(cache.stats().redisCommands).toBe(0)
    await cache.close()
    expect(cluster.status).toBe('wait') // the caller's Cluster was never connected or quit by us
  })

  it('keeps the password out of util.inspect of the cache', async () => {
    const cache = createCache({
      redis: { host: '127.0.0.1', port: 1, password: 'hunter2-secret' },
      l1: false,
    })
    expect(inspect(cache, { depth: 10 })).not.toContain('hunter2')
    await cache.close()
  })

  it('validates per-call options and keys', async () => {
    const cache = createCache({ redis: false, maxKeyLength: 8 })
    await expect(cache.getOrLoad('k', () => 1, { ttlMs: 0 })).rejects.toThrow('options.ttlMs')
    await expect(cache.getOrLoad('k', () => 1, { tags: [''] })).rejects.toThrow('options.tags[]')
    await expect(cache.getOrLoad('k', () => 1, { tag: ['x'] } as never)).rejects.toThrow('options.tag')
    await expect(cache.getOrLoad('', () => 1)).rejects.toThrow(/key/)
    await expect(cache.getOrLoad('k', 'loader' as never)).rejects.toThrow('getOrLoad loader')
    const err = await cache.getOrLoad('a-very-long-key', () => 1).catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_LIMIT')).toBe(true)
    expect((err as Error).message).toContain('maxKeyLength (8)')
    // multi-byte: 3 characters, 9 bytes
    await expect(cache.get('€€€')).rejects.toThrow('9 bytes')
    await cache.close()
  })
})
