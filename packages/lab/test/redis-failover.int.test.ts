import { existsSync } from 'node:fs'
import { isProcessAlive, type Lab, redisCommand, startLab } from '@resilient/lab'
import { Cluster, Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const seconds = (t0: number) => ((performance.now() - t0) / 1000).toFixed(1)

/** ROLE's first field ('master' or 'slave') of a server. */
async function role(port: number): Promise<string> {
  const reply = await redisCommand(port, ['ROLE'])
  return Array.isArray(reply) ? String(reply[0]) : String(reply)
}

describe('Redis failovers: Redis Cluster, and a demotion behind a fixed endpoint (nodes: 0)', () => {
  let lab: Lab
  const clients: Array<Redis | Cluster> = []

  beforeAll(async () => {
    const t0 = performance.now()
    lab = await startLab({ nodes: 0, redisReplica: true, redisCluster: true })
    console.log(`Redis lab (primary + replica + endpoint + 6-node cluster) ready in ${seconds(t0)} s`)
  })

  afterAll(async () => {
    for (const c of clients) c.disconnect()
    await lab?.down()
  })

  function cluster(): Cluster {
    const c = new Cluster(
      lab.redisCluster!.nodes.map((n) => ({ host: n.host, port: n.port })),
      { redisOptions: { maxRetriesPerRequest: 3 } },
    )
    clients.push(c)
    return c
  }

  function redis(port: number): Redis {
    const c = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 })
    c.on('error', () => {}) // the demotion tests look at command results
    clients.push(c)
    return c
  }

  it('Redis Cluster: 3 masters + 3 replicas, every node ok; ioredis.Cluster works across slots and through a failover', async () => {
    const info = lab.redisCluster!
    expect(info.nodes.map((n) => [n.name, n.role])).toEqual([
      ['cluster0', 'master'],
      ['cluster1', 'master'],
      ['cluster2', 'master'],
      ['cluster3', 'replica'],
      ['cluster4', 'replica'],
      ['cluster5', 'replica'],
    ])
    for (const n of info.nodes) {
      expect(String(await redisCommand(n.port, ['CLUSTER', 'INFO']))).toContain('cluster_state:ok')
      expect(isProcessAlive(n.pid!)).toBe(true)
    }
    const c = cluster()
    const keys = Array.from({ length: 60 }, (_, i) => `key:${i}`)
    for (const k of keys) await c.set(k, `v1:${k}`)
    // The keys really are spread over the three masters (slots 0-5460, 5461-10921, 10922-16383).
    const slots = await Promise.all(
      keys.map((k) => redisCommand(info.nodes[0]!.port, ['CLUSTER', 'KEYSLOT', k])),
    )
    const masters = new Set(slots.map((s) => (Number(s) <= 5460 ? 0 : Number(s) <= 10921 ? 1 : 2)))
    expect(masters.size).toBe(3)

    const t0 = performance.now()
    const result = await lab.failoverRedisClusterMaster('key:7')
    console.log(`failoverRedisClusterMaster: ${result.master} -> ${result.promoted} in ${seconds(t0)} s`)
    const slot = Number(await redisCommand(info.nodes[0]!.port, ['CLUSTER', 'KEYSLOT', 'key:7']))
    expect(result.slots.some(([a, b]) => slot >= a && slot <= b)).toBe(true)
    const byName = (name: string) => lab.redisCluster!.nodes.find((n) => n.name === name)!
    expect(await role(byName(result.promoted).port)).toBe('master')
    expect(await role(byName(result.master).port)).toBe('slave')
    expect(byName(result.promoted).role).toBe('master')
    expect(byName(result.master).role).toBe('replica')
    for (const n of lab.redisCluster!.nodes)
      expect(String(await redisCommand(n.port, ['CLUSTER', 'INFO']))).toContain('cluster_state:ok')
    // A coordinated failover loses nothing; the same client follows the MOVED slots.
    for (const k of keys) expect(await c.get(k)).toBe(`v1:${k}`)
    for (const k of keys) await c.set(k, `v2:${k}`)
    for (const k of keys) expect(await c.get(k)).toBe(`v2:${k}`)
  })

  it('killRedisClusterMaster: its replica takes over; restartRedisNode brings it back as a replica', async () => {
    const t0 = performance.now()
    const result = await lab.killRedisClusterMaster('cluster1')
    console.log(`killRedisClusterMaster: ${result.master} -> ${result.promoted} in ${seconds(t0)} s`)
    expect(result.master).toBe('cluster1')
    const killed = lab.redisCluster!.nodes.find((n) => n.name === 'cluster1')!
    expect(killed.pid).toBeUndefined()
    expect(await role(lab.redisCluster!.nodes.find((n) => n.name === result.promoted)!.port)).toBe('master')
    const c = cluster()
    for (let i = 0; i < 30; i++) await c.set(`after-kill:${i}`, String(i))
    for (let i = 0; i < 30; i++) expect(await c.get(`after-kill:${i}`)).toBe(String(i))

    const t1 = performance.now()
    await lab.restartRedisNode('cluster1')
    console.log(`restartRedisNode(cluster1): back as a replica in ${seconds(t1)} s`)
    const back = lab.redisCluster!.nodes.find((n) => n.name === 'cluster1')!
    expect(back.role).toBe('replica')
    expect(await role(back.port)).toBe('slave')
    expect(lab.redisCluster!.nodes.filter((n) => n.role === 'master')).toHaveLength(3)
  })

  it('demoteRedisPrimary: the old primary answers READONLY to writes and serves reads; the endpoint reaches the new primary', async () => {
    const old = lab.redis
    const endpoint = lab.redisEndpoint!
    expect(endpoint.port).not.toBe(old.port)
    const direct = redis(old.port)
    const viaEndpoint = redis(endpoint.port)
    await direct.set('before', '1')
    await viaEndpoint.set('via-endpoint', '1')
    expect(await viaEndpoint.get('before')).toBe('1') // the endpoint leads to the primary

    const t0 = performance.now()
    const result = await lab.demoteRedisPrimary()
    console.log(`demoteRedisPrimary: ${result.demoted} -> ${result.promoted} in ${seconds(t0)} s`)
    expect(lab.redis.port).not.toBe(old.port)
    expect(await role(lab.redis.port)).toBe('master')
    expect(await role(old.port)).toBe('slave')

    // Connected to the old primary, directly or through the endpoint: writes READONLY, reads work.
    await expect(direct.set('before', '2')).rejects.toThrow(/^READONLY/)
    expect(await direct.get('before')).toBe('1')
    await expect(viaEndpoint.set('x', '1')).rejects.toThrow(/^READONLY/)
    expect(await viaEndpoint.get('via-endpoint')).toBe('1')
    // A new connection through the same endpoint reaches the new primary.
    const fresh = redis(endpoint.port)
    expect(await fresh.set('after', '1')).toBe('OK')
    expect(await fresh.get('before')).toBe('1')
    // What the new primary takes reaches the demoted one.
    const deadline = Date.now() + 5000
    while ((await direct.get('after')) !== '1' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20))
    expect(await direct.get('after')).toBe('1')
  })

  it('demoteRedisPrimary({ dropConnections }): endpoint connections are closed; ioredis reconnects to the new primary', async () => {
    const endpoint = lab.redisEndpoint!
    const c = redis(endpoint.port)
    expect(await c.set('k', 'before')).toBe('OK')
    let closed = 0
    c.on('close', () => closed++)
    const result = await lab.demoteRedisPrimary({ dropConnections: true })
    expect(lab.state.redisPrimary).toBe(result.promoted)
    const deadline = Date.now() + 5000
    while (closed === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    expect(closed).toBeGreaterThan(0)
    // ioredis reconnects by itself, through the endpoint, to the new primary.
    expect(await c.set('k', 'after')).toBe('OK')
    expect(await redisCommand(lab.redis.port, ['GET', 'k'])).toBe('after')
  })

  it('down() ends every Redis server, cluster node and the endpoint', async () => {
    const pids = lab.pids()
    expect(pids.filter(isProcessAlive).length).toBeGreaterThanOrEqual(10)
    for (const c of clients.splice(0)) c.disconnect()
    await lab.down()
    expect(pids.filter(isProcessAlive)).toEqual([])
    expect(existsSync(lab.baseDir)).toBe(false)
  })
})
