/**
 * startLab(): plans every part of a lab into one state (folders, ports, configuration files),
 * writes lab.json, then boots the parts and waits until each is ready. Each part keeps its own
 * configuration (PostgresClusterConfig, RedisConfig, RedisClusterPart.plan's), so an option of
 * one part (TLS, say) lands in that part.
 */
import { chownSync, mkdirSync } from 'node:fs'
import { Lab } from './lab.js'
import { newLabState, prepareLabFolder } from './lifecycle.js'
import { ensurePackages, requirements } from './packages.js'
import { PortAllocator } from './ports.js'
import { PostgresCluster, type PostgresClusterConfig } from './postgres.js'
import { postgresUser } from './procs.js'
import { type RedisConfig, RedisServers } from './redis.js'
import { RedisClusterPart } from './redis-cluster.js'
import { writeState } from './state.js'
import { errorMessage } from './util.js'

export interface LabOptions {
  /** Patroni members; 0 starts no PostgreSQL (and no etcd) at all. Default 3. */
  nodes?: number
  /** Patroni `synchronous_mode`. Default false. */
  synchronousMode?: boolean
  /**
   * Patroni `failsafe_mode` (DCS): a leader that cannot reach etcd stays primary as long as
   * every member answers its POST /failsafe; without it Patroni demotes the leader. Default false.
   */
  failsafeMode?: boolean
  /** Start a Redis server. Default true (forced on by `sentinel` and `redisReplica`). */
  redis?: boolean
  /** Also a Redis replica and 3 sentinels monitoring master name 'resilient'. Default false. */
  sentinel?: boolean
  /**
   * A Redis replica (`redis1`) of the Redis server, and a fixed endpoint in front of the primary
   * (`lab.redisEndpoint`), for demoteRedisPrimary(). Implies `redis`. Default false.
   */
  redisReplica?: boolean
  /**
   * A Redis Cluster of 3 masters + 3 replicas (`lab.redisCluster`), on top of whatever else
   * starts. With `nodes: 0, redis: false` it is all the lab starts. Default false.
   */
  redisCluster?: boolean
  /** The lab folder. Default: a fresh mkdtemp folder under os.tmpdir() (resilient-lab-XXXXXX). */
  baseDir?: string
  log?: (line: string) => void
  /** How long startLab waits for the whole lab to be ready. Default 90 000 ms. */
  readyTimeoutMs?: number
  /**
   * Keep the servers running after this process exits (the CLI's `up`): no exit hooks, no
   * watchdog; end the lab with down() or `resilient-lab down`. Default false.
   */
  persistent?: boolean
}

/**
 * Starts a lab: etcd + N Patroni members (PostgreSQL 15), Redis (+ a replica and the endpoint,
 * or a replica and 3 sentinels), a Redis Cluster, all on 127.0.0.1 on free ports, in a folder of
 * its own. Resolves when the cluster has one running leader and N-1 streaming replicas, Redis
 * answers, the Redis Cluster is ok on every node, and the sentinels agree. If anything fails it
 * tears down what it started and throws.
 */
export async function startLab(options: LabOptions = {}): Promise<Lab> {
  const started = performance.now()
  const sentinel = options.sentinel ?? false
  const redisReplica = options.redisReplica ?? false
  const pgConfig: PostgresClusterConfig = {
    nodes: options.nodes ?? 3,
    synchronousMode: options.synchronousMode ?? false,
    failsafeMode: options.failsafeMode ?? false,
  }
  const redisConfig: RedisConfig = {
    enabled: (options.redis ?? true) || sentinel || redisReplica,
    replica: redisReplica,
    sentinel,
  }
  const redisCluster = options.redisCluster ?? false
  const readyTimeoutMs = options.readyTimeoutMs ?? 90_000
  const log = options.log ?? (() => {})
  const { nodes } = pgConfig
  if (!Number.isInteger(nodes) || nodes < 0 || nodes > 9)
    throw new Error(`nodes must be an integer 0..9, got ${nodes}`)
  if (nodes === 0 && !redisConfig.enabled && !redisCluster)
    throw new Error('nothing to start: nodes is 0, redis and redisCluster are false')

  ensurePackages(requirements({ nodes, redis: redisConfig.enabled, sentinel, redisCluster }), log)
  // PostgreSQL refuses to run as root: etcd and Patroni then run as the postgres user.
  const runAs = nodes > 0 ? postgresUser() : undefined
  const baseDir = prepareLabFolder(options.baseDir, runAs)
  const own = (path: string) => {
    if (runAs) chownSync(path, runAs.uid, runAs.gid)
  }
  const mkdir = (path: string) => {
    mkdirSync(path, { recursive: true, mode: 0o700 })
    return path
  }
  const mkdirForPostgres = (path: string) => {
    mkdir(path)
    own(path)
    return path
  }

  const ports = new PortAllocator(baseDir)
  const state = newLabState(baseDir, ports, {
    persistent: options.persistent ?? false,
    synchronousMode: pgConfig.synchronousMode,
    failsafeMode: pgConfig.failsafeMode,
  })
  try {
    await PostgresCluster.plan(state, ports, mkdirForPostgres, own, pgConfig)
    await RedisServers.plan(state, ports, mkdir, redisConfig)
    if (redisCluster) state.redisCluster = await RedisClusterPart.plan(baseDir, ports, mkdir)
  } catch (err) {
    ports.release()
    throw err
  }

  writeState(state)
  const lab = new Lab(state, { log, readyTimeoutMs, owned: !options.persistent })
  const { lifecycle, postgres, redis, redisCluster: cluster } = lab.parts
  try {
    if (!options.persistent) lifecycle.startWatchdog()
    log(`lab folder ${baseDir} (scope ${state.scope})`)
    const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)} s`
    const remaining = () => Math.max(1000, readyTimeoutMs - (performance.now() - started))
    // Everything that needs no one else starts at once; then the waits, in dependency order.
    await postgres.bootEtcd()
    await redis.bootRedis()
    await cluster.boot()
    if (nodes > 0) {
      await postgres.waitForEtcd(remaining())
      log(`etcd ready (${elapsed()})`)
      await postgres.bootPatroni()
    }
    if (redisConfig.enabled) {
      await redis.waitForRedis(remaining())
      log(`redis ready (${elapsed()})`)
    }
    if (redisReplica) {
      await redis.bootRedisEndpoint(remaining())
      log(`redis endpoint ready (${elapsed()})`)
    }
    if (redisCluster) {
      await cluster.form(remaining())
      log(`redis cluster ok (${elapsed()})`)
    }
    await redis.bootSentinels()
    if (nodes > 0) {
      await postgres.waitForCluster(remaining())
      log(`patroni: 1 leader, ${nodes - 1} streaming replica(s) (${elapsed()})`)
    }
    if (sentinel) {
      await redis.waitForSentinels(remaining())
      log(`sentinels ready (${elapsed()})`)
    }
    const seconds = Math.round((performance.now() - started) / 100) / 10
    lifecycle.setBootSeconds(seconds)
    log(`lab ready in ${seconds} s`)
    return lab
  } catch (err) {
    log(`lab failed to start: ${errorMessage(err)}`)
    await lab.down().catch(() => {})
    throw err
  }
}
