import { type Cache, createCache } from '@resilient/cache'
import { afterAll, describe, expect, it } from 'vitest'
import { cacheContract } from './support/contract.js'
import { sleep, until } from './support/helpers.js'
import { cluster } from './support/topology.js'

// The contract suite on a Redis Cluster of 3 masters + 3 replicas, then a failover of one master.

const { topology } = cacheContract(cluster, { killAndRestart: false })

describe('Redis Cluster failover', () => {
  const caches: Cache[] = []
  afterAll(async () => {
    await Promise.all(caches.map((c) => c.close()))
  })

  it('a master failed over under load: no request fails, and writes land on the promoted node', async () => {
    const t = topology()
    const redis = t.redis()
    const a = createCache({ redis, namespace: 'cl-failover' })
    const b = createCache({ redis: t.redis(), namespace: 'cl-failover', l1: false })
    caches.push(a, b)
    await until(
      () => [a, b].every((c) => c.stats().redisStatus === 'ready' && c.stats().pubsub === 'subscribed'),
      10_000,
      'ready',
    )
    const key = 'book:1'
    await a.set(key, 'before')
    expect(await b.get(key)).toBe('before')
    let stop = false
    let calls = 0
    const failures: unknown[] = []
    const load = (async () => {
      while (!stop) {
        for (const c of [a, b]) {
          await c.getOrLoad(`load-${calls % 50}`, async () => calls).catch((e: unknown) => failures.push(e))
          calls++
        }
        await sleep(2)
      }
    })()
    const f = await t.lab.failoverRedisClusterMaster(`cl-failover:{${key}}:v`)
    // A value written after the failover is read back from both instances.
    await until(
      async () => {
        try {
          await a.set(key, 'after')
          return (await b.get(key)) === 'after'
        } catch {
          return false
        }
      },
      5_000,
      'a write after the failover, read back',
    )
    stop = true
    await load
    expect(failures).toEqual([])
    expect(calls).toBeGreaterThan(20)
    const promoted = t.lab.redisCluster!.nodes.find((n) => n.name === f.promoted)!
    expect(await t.lab.redisCommand(['GET', `cl-failover:{${key}}:v`], promoted.port)).toMatch(/"after"$/)
  })
})
