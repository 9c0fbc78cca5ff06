import type { CacheOptions } from '@resilient/cache'
import { type Lab, startLab } from '@resilient/lab'
import { Cluster, Redis } from 'ioredis'

/**
 * One way of running Redis that the cache's contract suite runs against (as bentocache runs
 * one suite per driver): a single server, a master with a replica behind Sentinel, a Cluster.
 * The suite only uses what is here, so every test means the same thing on each.
 */
export interface Topology {
  readonly name: 'standalone' | 'sentinel' | 'cluster'
  readonly lab: Lab
  /** The `redis` option of createCache: fresh options each time (the cache creates its client). */
  redis(): CacheOptions['redis']
  /** A plain ioredis client to look at and tamper with Redis (on a Cluster, routed by key). */
  readonly raw: Pick<Redis, 'call' | 'publish' | 'quit' | 'disconnect'>
  /** SIGSTOP every server that holds data: connections stay open, nothing answers. */
  pause(): Promise<void>
  resume(): Promise<void>
  /** kill -9 and restart every server that holds data; undefined where that means a failover. */
  readonly killAndRestart: { kill(): Promise<void>; restart(): Promise<void> } | undefined
  close(): Promise<void>
}

export async function standalone(): Promise<Topology> {
  // With a replica and the fixed endpoint: standalone.int.test.ts ends with a demotion.
  const lab = await startLab({ nodes: 0, redisReplica: true })
  const raw = new Redis({ host: lab.redis.host, port: lab.redis.port })
  raw.on('error', () => {}) // the kill test takes the server away from it too
  return {
    name: 'standalone',
    lab,
    redis: () => ({ host: lab.redis.host, port: lab.redis.port }),
    raw,
    pause: () => lab.pauseRedis(),
    resume: () => lab.resumeRedis(),
    killAndRestart: { kill: () => lab.killRedis(), restart: () => lab.restartRedis() },
    async close() {
      raw.disconnect()
      await lab.down()
    },
  }
}

export async function sentinel(): Promise<Topology> {
  const lab = await startLab({ nodes: 0, sentinel: true })
  const s = lab.sentinel!
  const raw = new Redis({ sentinels: s.sentinels, name: s.name })
  raw.on('error', () => {})
  return {
    name: 'sentinel',
    lab,
    redis: () => ({ sentinels: s.sentinels, name: s.name }),
    raw,
    pause: () => lab.pauseRedis(),
    resume: () => lab.resumeRedis(),
    // Killing the master is a failover here: sentinel.int.test.ts does that on its own.
    killAndRestart: undefined,
    async close() {
      raw.disconnect()
      await lab.down()
    },
  }
}

export async function cluster(): Promise<Topology> {
  const lab = await startLab({ nodes: 0, redis: false, redisCluster: true })
  const nodes = lab.redisCluster!.nodes.map((n) => ({ host: n.host, port: n.port }))
  const raw = new Cluster(nodes)
  raw.on('error', () => {})
  /** The PIDs of the nodes that are masters now (failovers move them). */
  const masters = async (): Promise<number[]> => {
    const pids: number[] = []
    for (const n of lab.redisCluster!.nodes) {
      const role = await lab.redisCommand(['ROLE'], n.port).catch(() => undefined)
      if (Array.isArray(role) && role[0] === 'master' && n.pid) pids.push(n.pid)
    }
    return pids
  }
  let paused: number[] = []
  return {
    name: 'cluster',
    lab,
    redis: () => ({ cluster: nodes }),
    raw,
    // Every master at once (the replicas cannot fail over without a majority of masters).
    async pause() {
      paused = await masters()
      for (const pid of paused) process.kill(pid, 'SIGSTOP')
    },
    async resume() {
      for (const pid of paused) process.kill(pid, 'SIGCONT')
      paused = []
    },
    // Killing a master is a failover here: cluster.int.test.ts does that on its own.
    killAndRestart: undefined,
    async close() {
      raw.disconnect()
      await lab.down()
    },
  }
}
