import { existsSync } from 'node:fs'
import { isProcessAlive, type Lab, redisCommand, startLab } from '@resilient/lab'
import { afterAll, describe, expect, it } from 'vitest'

describe('Redis Sentinel lab (nodes: 0)', () => {
  let lab: Lab | undefined

  afterAll(async () => {
    await lab?.down()
  })

  it('killRedisPrimary: the sentinels promote the replica', async () => {
    const t0 = performance.now()
    lab = await startLab({ nodes: 0, sentinel: true })
    console.log(`sentinel lab ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    expect(lab.members).toEqual([])
    expect(lab.sentinel?.name).toBe('resilient')
    expect(lab.sentinel?.sentinels).toHaveLength(3)
    const before = lab.redis
    const sentinelPort = lab.sentinel!.sentinels[0]!.port
    expect(await redisCommand(sentinelPort, ['SENTINEL', 'get-master-addr-by-name', 'resilient'])).toEqual([
      '127.0.0.1',
      String(before.port),
    ])
    const replica = lab.redisNodes.find((n) => n.port !== before.port)!
    expect(await redisCommand(before.port, ['SET', 'k', 'v'])).toBe('OK')

    const t1 = performance.now()
    const killed = await lab.killRedisPrimary()
    expect(killed.port).toBe(before.port)
    const next = await lab.waitForRedisFailover({ timeoutMs: 30_000 })
    console.log(`sentinel failover took ${((performance.now() - t1) / 1000).toFixed(1)} s`)
    expect(next.port).toBe(replica.port)
    expect(lab.redis.port).toBe(replica.port)
    for (const s of lab.sentinel!.sentinels) {
      expect(await redisCommand(s.port, ['SENTINEL', 'get-master-addr-by-name', 'resilient'])).toEqual([
        '127.0.0.1',
        String(replica.port),
      ])
    }
    const role = await redisCommand(replica.port, ['ROLE'])
    expect(Array.isArray(role) && role[0]).toBe('master')
    expect(await redisCommand(replica.port, ['GET', 'k'])).toBe('v')

    // The old primary comes back as a replica of the new one.
    await lab.restartRedisNode(killed.name)
    const oldRole = await redisCommand(killed.port, ['ROLE'])
    expect(Array.isArray(oldRole) && oldRole[0]).toBe('slave')
  })
})

describe('two labs at once', () => {
  it('do not collide (ports, folders, processes, data)', async () => {
    const [a, b] = await Promise.all([startLab({ nodes: 0 }), startLab({ nodes: 1, redis: true })])
    try {
      expect(a.baseDir).not.toBe(b.baseDir)
      const portsA = a.state.ports
      const portsB = b.state.ports
      expect(portsA.filter((p) => portsB.includes(p))).toEqual([])
      expect(a.redis.port).not.toBe(b.redis.port)
      await redisCommand(a.redis.port, ['SET', 'who', 'a'])
      await redisCommand(b.redis.port, ['SET', 'who', 'b'])
      expect(await redisCommand(a.redis.port, ['GET', 'who'])).toBe('a')
      expect(await redisCommand(b.redis.port, ['GET', 'who'])).toBe('b')
      expect((await b.primary())?.name).toBe('pg0')
      expect(await b.sql('select 40 + 2')).toEqual([['42']])
      expect(a.pids().filter((p) => b.pids().includes(p))).toEqual([])
      // One lab going down leaves the other running.
      await a.down()
      expect(a.pids().some(isProcessAlive)).toBe(false)
      expect(existsSync(a.baseDir)).toBe(false)
      expect(await redisCommand(b.redis.port, ['PING'])).toBe('PONG')
      expect(await b.sql('select 1')).toEqual([['1']])
    } finally {
      await Promise.all([a.down(), b.down()])
    }
    expect(b.pids().some(isProcessAlive)).toBe(false)
    expect(existsSync(b.baseDir)).toBe(false)
  })
})
