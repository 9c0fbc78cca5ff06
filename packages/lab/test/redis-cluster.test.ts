import { describe, expect, it } from 'vitest'
import { formatStatus, isHealthy, parseCli } from '../src/commands.js'
import { REDIS_CLUSTER_DEFAULTS, redisClusterArgs } from '../src/config.js'
import type { LabStatus } from '../src/lab.js'
import { parseClusterNodes, SLOTS, slotRanges } from '../src/redis-cluster.js'

describe('Redis Cluster helpers', () => {
  it('splits the 16384 slots evenly and without gaps', () => {
    expect(slotRanges(3)).toEqual([
      [0, 5460],
      [5461, 10921],
      [10922, 16383],
    ])
    for (const n of [1, 2, 3, 5, 7]) {
      const ranges = slotRanges(n)
      expect(ranges[0]![0]).toBe(0)
      expect(ranges.at(-1)![1]).toBe(SLOTS - 1)
      for (let i = 1; i < n; i++) expect(ranges[i]![0]).toBe(ranges[i - 1]![1] + 1)
    }
  })

  it('parses CLUSTER NODES: address, flags, master, link, slot ranges; migrations ignored', () => {
    const text = [
      '07c3 127.0.0.1:30004@31004,host.a slave e7d1 0 1426238317239 4 connected',
      'e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 5462 [5461->-abcd]',
      '6ec2 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 disconnected',
      '',
    ].join('\n')
    expect(parseClusterNodes(text)).toEqual([
      { id: '07c3', port: 30004, flags: ['slave'], masterId: 'e7d1', linkState: 'connected', slots: [] },
      {
        id: 'e7d1',
        port: 30001,
        flags: ['myself', 'master'],
        masterId: '-',
        linkState: 'connected',
        slots: [
          [0, 5460],
          [5462, 5462],
        ],
      },
      {
        id: '6ec2',
        port: 30003,
        flags: ['master', 'fail'],
        masterId: '-',
        linkState: 'disconnected',
        slots: [],
      },
    ])
  })

  it('node arguments: cluster mode, its own bus port (not port + 10000), nodes.conf in its folder', () => {
    const args = redisClusterArgs({ port: 15001, busPort: 15002, dir: '/lab/cluster0' })
    const value = (flag: string) => args[args.indexOf(flag) + 1]
    expect(value('--port')).toBe('15001')
    expect(value('--cluster-enabled')).toBe('yes')
    expect(value('--cluster-port')).toBe('15002')
    expect(value('--cluster-config-file')).toBe('nodes.conf')
    expect(value('--dir')).toBe('/lab/cluster0')
    expect(value('--cluster-node-timeout')).toBe(String(REDIS_CLUSTER_DEFAULTS.nodeTimeoutMs))
    expect(value('--save')).toBe('')
  })
})

describe('CLI for the Redis pieces', () => {
  it('parses --redis-replica, --redis-cluster and --drop', () => {
    expect(parseCli(['up', '--redis-replica', '--redis-cluster', '--nodes', '0'], '/w')).toMatchObject({
      redisReplica: true,
      redisCluster: true,
      nodes: 0,
    })
    expect(parseCli(['chaos', 'demote-redis-primary', '--drop'], '/w')).toMatchObject({ drop: true })
    expect(parseCli(['up'], '/w')).toMatchObject({ redisReplica: false, redisCluster: false, drop: false })
  })

  const st: LabStatus = {
    baseDir: '/w/.lab',
    scope: 's',
    members: [],
    redis: [{ name: 'redis0', port: 4, pid: 4, role: 'master', detail: '1 replica(s)' }],
    sentinels: [],
    redisCluster: [
      { name: 'cluster0', port: 5, pid: 5, role: 'master', detail: 'cluster_state:ok' },
      { name: 'cluster3', port: 6, pid: 6, role: 'replica', detail: 'cluster_state:ok' },
    ],
    redisEndpoint: { port: 7, pid: 7, target: 'redis0', ok: true },
  }

  it('healthy needs every cluster node ok and the endpoint answering; status prints them', () => {
    expect(isHealthy(st, [])).toBe(true)
    const down = {
      ...st,
      redisCluster: [st.redisCluster![0]!, { ...st.redisCluster![1]!, role: 'down', detail: 'x' }],
    }
    expect(isHealthy(down, [])).toBe(false)
    expect(isHealthy({ ...st, redisEndpoint: { ...st.redisEndpoint!, ok: false } }, [])).toBe(false)
    const text = formatStatus(st, [])
    expect(text).toMatch(/cluster0\s+master\s+127\.0\.0\.1:5\s+pid 5\s+cluster_state:ok/)
    expect(text).toMatch(/endpoint\s+ok\s+127\.0\.0\.1:7\s+pid 7\s+-> redis0/)
  })
})
