import { type Cache, type CacheOptions, createCache } from '@resilient/cache'
import { afterEach, describe, expect, it } from 'vitest'
import { cacheContract } from './support/contract.js'
import { sleep, until } from './support/helpers.js'
import { TcpProxy } from './support/proxy.js'
import { standalone } from './support/topology.js'

// The contract suite on a single Redis from the lab, then what needs one server's ACLs or a
// TCP proxy in front of it (network faults a server cannot show).

const { topology } = cacheContract(standalone, { killAndRestart: true })

describe('standalone only', () => {
  const caches: Cache[] = []
  const proxies: TcpProxy[] = []
  let seq = 0
  afterEach(async () => {
    await Promise.all(caches.splice(0).map((c) => c.close()))
    await Promise.all(proxies.splice(0).map((p) => p.close()))
  })
  function make(options: Partial<CacheOptions> = {}): Cache {
    const t = topology()
    const cache = createCache({ redis: { host: t.lab.redis.host, port: t.lab.redis.port }, ...options })
    caches.push(cache)
    return cache
  }
  const ns = (name: string) => `${name}-so-${++seq}`
  const ready = (c: Cache) => until(() => c.stats().redisStatus === 'ready', 5_000, 'redis ready')

  it('a SUBSCRIBE that fails is retried, and L1 filled before the subscription is resynced; check() says so meanwhile (defect 4)', async () => {
    const t = topology()
    const n = ns('sub-retry')
    // A user that may not use any channel: SUBSCRIBE fails (NOPERM) until it may.
    await t.raw.call('ACL', 'SETUSER', 'bus-test', 'reset', 'on', 'nopass', '~*', '+@all', 'resetchannels')
    const other = make({ namespace: n })
    const c = make({
      namespace: n,
      redis: { host: t.lab.redis.host, port: t.lab.redis.port, username: 'bus-test' },
    })
    await ready(other)
    await ready(c)
    await until(() => c.stats().redisErrors > 0, 5_000, 'the SUBSCRIBE refused')
    expect(await c.getOrLoad('k', async () => 'v1')).toBe('v1') // in c's L1, before any subscription
    expect((await c.check()).status).toBe('warn')
    await other.delete('k') // published while c cannot hear it
    await t.raw.call('ACL', 'SETUSER', 'bus-test', 'allchannels')
    await until(() => c.stats().pubsub === 'subscribed', 5_000, 'subscribed on a retry')
    expect(await c.getOrLoad('k', async () => 'v2')).toBe('v2') // L1 was resynced when it subscribed
    expect((await c.check()).status).toBe('pass')
  })

  it('a half-open pub/sub connection is found by the heartbeat and remade, and L1 resynced (defect 4)', async () => {
    const t = topology()
    const n = ns('half-open')
    const proxy = await TcpProxy.start(t.lab.redis.port)
    proxies.push(proxy)
    const c = make({ namespace: n, redis: { host: '127.0.0.1', port: proxy.port } })
    const other = make({ namespace: n })
    await ready(other)
    await ready(c)
    await until(() => proxy.connections.some((x) => x.sent.includes('subscribe')), 5_000, 'subscribed')
    await until(
      () => c.stats().pubsub === undefined || c.stats().pubsub === 'subscribed',
      5_000,
      'subscribed',
    )
    expect(await c.getOrLoad('k', async () => 'v1')).toBe('v1')
    await c.flush() // stored in Redis before the delete below (else that delete wins the race rule)
    // The subscriber's connection goes silent, without a reset: it looks fine from c's side.
    expect(proxy.blackhole((x) => x.sent.includes('subscribe'))).toBe(1)
    await other.delete('k') // lost on the way to c
    // Within a heartbeat (1 s) and its timeout, c remakes the connection and resyncs L1.
    await until(async () => (await c.get('k')) === undefined, 4_000, 'L1 resynced after the heartbeat failed')
    await until(() => c.stats().pubsub === 'subscribed', 4_000, 'subscribed again')
    expect(proxy.connections.filter((x) => x.sent.includes('subscribe')).length).toBe(2)
  })

  it('a black-holed connection (no reset, no reply) is dropped and remade after timeouts in a row (defect 5)', async () => {
    const t = topology()
    const n = ns('black-hole')
    const proxy = await TcpProxy.start(t.lab.redis.port)
    proxies.push(proxy)
    const c = make({
      namespace: n,
      l1: false,
      redisTimeoutMs: 100,
      breaker: { resetTimeoutMs: 500 },
      redis: { host: '127.0.0.1', port: proxy.port },
    })
    await ready(c)
    await c.set('k', 'v')
    const before = proxy.connections.length
    expect(proxy.blackhole((x) => !x.sent.includes('subscribe'))).toBe(1)
    // Timeouts, the breaker opens; after 3 in a row the connection is remade (a new one works).
    await until(
      async () => (await c.getOrLoad('k', async () => 'from the loader')) === 'v',
      6_000,
      'Redis used again over a new connection',
      100,
    )
    expect(proxy.connections.length).toBeGreaterThan(before)
    expect(c.stats().reconnects).toBeGreaterThanOrEqual(1)
  })

  it('set() with tags whose registration fails writes nothing, and fails (defect 10)', async () => {
    const t = topology()
    const n = ns('set-tags')
    // A user that may not add to the tag index (neither a set nor a sorted set).
    await t.raw.call(
      'ACL',
      'SETUSER',
      'tagless',
      'reset',
      'on',
      'nopass',
      '~*',
      '&*',
      '+@all',
      '-sadd',
      '-zadd',
    )
    const c = make({
      namespace: n,
      redis: { host: t.lab.redis.host, port: t.lab.redis.port, username: 'tagless' },
    })
    await ready(c)
    await expect(c.set('k', 'v', { tags: ['t'] })).rejects.toMatchObject({ code: 'E_CACHE_UNAVAILABLE' })
    expect(await t.raw.call('EXISTS', `${n}:{k}:v`)).toBe(0) // not stored untagged: a deleteByTag could not find it
    expect(await c.get('k')).toBeUndefined()
  })

  // Runs last: the lab's primary changes.
  it('a failover that demotes the connected node (READONLY behind a fixed endpoint): no request fails, a value written after it is read by every instance within 2 s', async () => {
    const t = topology()
    const endpoint = t.lab.redisEndpoint!
    const n = ns('demote')
    const at = { host: endpoint.host, port: endpoint.port }
    const cs = [0, 1, 2].map(() => make({ namespace: n, redis: { ...at } }))
    await until(
      () =>
        cs.every(
          (c) => c.stats().redisStatus === 'ready' && (c.stats().pubsub ?? 'subscribed') === 'subscribed',
        ),
      5_000,
      'ready',
    )
    await cs[0]!.set('before', 'b')
    const failures: unknown[] = []
    let stop = false
    let calls = 0
    const load = Promise.all(
      cs.map(async (c, i) => {
        while (!stop) {
          const k = `load-${i}-${calls % 40}`
          await c.getOrLoad(k, async () => calls).catch((e: unknown) => failures.push(e))
          await c.get('before').catch((e: unknown) => failures.push(e))
          calls++
          await sleep(1)
        }
      }),
    )
    await sleep(200)
    const { promoted } = await t.lab.demoteRedisPrimary() // connections through the endpoint stay on the old node
    const demotedAt = performance.now()
    // A write after the demotion: the connection is remade (READONLY), the write lands on the
    // promoted node, and every instance reads it.
    await until(
      async () => {
        try {
          await cs[0]!.set('after', 'a')
        } catch {
          return false
        }
        return (await Promise.all(cs.map((c) => c.get('after')))).every((v) => v === 'a')
      },
      2_000,
      'a value written after the demotion, read by every instance',
    )
    const took = performance.now() - demotedAt
    stop = true
    await load
    expect(failures).toEqual([])
    expect(calls).toBeGreaterThan(30)
    expect(took).toBeLessThan(2_000)
    expect(cs[0]!.stats().reconnects).toBeGreaterThanOrEqual(1)
    const node = t.lab.redisNodes.find((x) => x.name === promoted)!
    expect(await t.lab.redisCommand(['EXISTS', `${n}:{after}:v`], node.port)).toBe(1)
  })
})
