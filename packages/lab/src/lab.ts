/**
 * `Lab`: the one object a test holds. A facade over the lab's parts, each in a file of its own:
 * the lifecycle (lifecycle.ts: state file, PIDs, exit hooks, watchdog, teardown), the Postgres
 * cluster (postgres.ts: etcd, Patroni, PostgreSQL, waits, kills, switchover, SQL;
 * postgres-rejoin.ts: bringing members back; postgres-gray.ts: freezes, read-only, replay
 * pause), the Redis servers
 * (redis.ts: standalone, replica and endpoint, Sentinel) and Redis Cluster (redis-cluster.ts).
 * startLab() (start.ts) plans, boots and waits for them.
 */
import type { LabContext } from './context.js'
import { LabLifecycle } from './lifecycle.js'
import {
  type ClusterInfo,
  type FrozenMember,
  type LabMember,
  type LabMemberStatus,
  type MemberStatusLine,
  PostgresCluster,
  type StartMemberOptions,
  type StartMemberResult,
} from './postgres.js'
import { PostgresGrayFailures } from './postgres-gray.js'
import { MemberRejoin } from './postgres-rejoin.js'
import { type RedisAddress, RedisServers, type RedisStatusLine, type SentinelInfo } from './redis.js'
import { type RedisClusterFailover, type RedisClusterInfo, RedisClusterPart } from './redis-cluster.js'
import type { RespValue } from './resp.js'
import type { LabState } from './state.js'

export {
  type ClusterInfo,
  type ClusterMember,
  type FrozenMember,
  type LabMember,
  type LabMemberStatus,
  parsePsqlOutput,
  type StartMemberOptions,
  type StartMemberResult,
} from './postgres.js'
export { logShowsDivergence } from './postgres-rejoin.js'
export type { RedisAddress, SentinelInfo } from './redis.js'

/** What status() reports: every part's servers. */
export interface LabStatus {
  baseDir: string
  scope: string
  members: MemberStatusLine[]
  patroniError?: string
  /** etcd frozen by freezeDcs(), not thawed yet. */
  dcsFrozen?: boolean
  redis: RedisStatusLine[]
  /** Redis Cluster nodes: role ('master', 'replica', 'down', 'not answering') and cluster_state. */
  redisCluster?: RedisStatusLine[]
  /** The fixed Redis endpoint and the server it sends new connections to. */
  redisEndpoint?: { port: number; pid: number | undefined; target: string; ok: boolean }
  sentinels: Array<{ name: string; port: number; pid: number | undefined; ok: boolean; master: string }>
}

/** The parts of a lab (startLab() boots them). */
export interface LabParts {
  lifecycle: LabLifecycle
  postgres: PostgresCluster
  gray: PostgresGrayFailures
  rejoin: MemberRejoin
  redis: RedisServers
  redisCluster: RedisClusterPart
}

/**
 * A running lab. Created by startLab(), or rehydrated from its state file with
 * Lab.fromState() (the CLI does that on every invocation). Every member below is documented
 * where it is implemented (postgres.ts, redis.ts, redis-cluster.ts, lifecycle.ts) and in the
 * README.
 */
export class Lab {
  readonly baseDir: string
  readonly #life: LabLifecycle
  readonly #pg: PostgresCluster
  readonly #gray: PostgresGrayFailures
  readonly #rejoin: MemberRejoin
  readonly #redis: RedisServers
  readonly #cluster: RedisClusterPart

  /** Use startLab() or Lab.fromState(). */
  constructor(
    state: LabState,
    opts: { log?: (line: string) => void; readyTimeoutMs?: number; owned?: boolean } = {},
  ) {
    this.baseDir = state.baseDir
    this.#life = new LabLifecycle(state, opts)
    const ctx: LabContext = this.#life
    this.#pg = new PostgresCluster(ctx)
    this.#gray = new PostgresGrayFailures(ctx, this.#pg)
    this.#rejoin = new MemberRejoin(ctx, this.#pg)
    this.#redis = new RedisServers(ctx)
    this.#cluster = new RedisClusterPart(ctx)
  }

  /** Rehydrates a lab from its state (or the folder holding lab.json). The processes keep running. */
  static fromState(
    state: LabState,
    opts: { log?: (line: string) => void; readyTimeoutMs?: number } = {},
  ): Lab {
    return new Lab(state, opts)
  }

  // ---------------------------------------------------------------- lifecycle

  /** A copy of the state (what lab.json holds). */
  get state(): LabState {
    this.#life.refresh()
    return structuredClone(this.#life.state)
  }

  /** Seconds startLab() took until the lab was ready. */
  get bootSeconds(): number | undefined {
    return this.#life.state.bootSeconds
  }

  /** Every PID this lab started (servers, watchdog), alive or not. */
  pids(): number[] {
    return this.#life.pids()
  }

  /** Stops every process the lab started, by PID, and removes its folder and port reservations. Idempotent. */
  down(): Promise<void> {
    return this.#life.down()
  }

  /** Synchronous kill -9 of everything (process exit hooks). Prefer down(). */
  killNow(): void {
    this.#life.killNow()
  }

  /** A summary for humans and the CLI's status verb. */
  async status(): Promise<LabStatus> {
    this.#life.refresh()
    const pg = await this.#pg.status()
    const redis = await this.#redis.status()
    return {
      baseDir: this.baseDir,
      scope: this.#life.state.scope,
      ...pg,
      ...redis,
      ...(this.#life.state.redisCluster ? { redisCluster: await this.#cluster.status() } : {}),
    }
  }

  /** @internal Writes lab.json. */
  save(): void {
    this.#life.save()
  }

  /** @internal The parts, for startLab(). */
  get parts(): LabParts {
    return {
      lifecycle: this.#life,
      postgres: this.#pg,
      gray: this.#gray,
      rejoin: this.#rejoin,
      redis: this.#redis,
      redisCluster: this.#cluster,
    }
  }

  // ---------------------------------------------------------------- Postgres cluster

  /** `{ endpoints, scope }`: every member's Patroni REST API. */
  get patroni(): { endpoints: string[]; scope: string } {
    return this.#pg.patroni
  }

  get members(): LabMember[] {
    return this.#pg.members
  }

  /** Credentials a client uses (password auth, scram-sha-256, on 127.0.0.1). */
  get postgres(): { user: string; password: string; database: string } {
    return this.#pg.postgres
  }

  /** postgres://... for a member; without a name, the leader as last observed. */
  connectionString(memberName?: string): string {
    return this.#pg.connectionString(memberName)
  }

  /** PIDs of the postmasters running now (started by Patroni, not by the lab). */
  postmasterPids(): number[] {
    return this.#pg.postmasterPids()
  }

  /** GET /cluster from the first member that answers (frozen members last). */
  cluster(): Promise<ClusterInfo> {
    return this.#pg.cluster()
  }

  /** The current leader according to /cluster, or undefined. */
  primary(): Promise<LabMemberStatus | undefined> {
    return this.#pg.primary()
  }

  /** Members that /cluster shows as running replicas with a known lag. */
  replicas(): Promise<LabMemberStatus[]> {
    return this.#pg.replicas()
  }

  /** A running, writable leader (other than `not`). */
  waitForPrimary(opts: { not?: string; timeoutMs?: number } = {}): Promise<LabMemberStatus> {
    return this.#pg.waitForPrimary(opts)
  }

  /** `n` replicas running with a known lag and streaming in the leader's pg_stat_replication. */
  waitForReplicas(n: number, opts: { timeoutMs?: number } = {}): Promise<LabMemberStatus[]> {
    return this.#pg.waitForReplicas(n, opts)
  }

  /** A member running (optionally as leader or replica). */
  waitForMember(
    name: string,
    opts: { role?: 'leader' | 'replica'; timeoutMs?: number } = {},
  ): Promise<LabMemberStatus> {
    return this.#pg.waitForMember(name, opts)
  }

  /** kill -9 of the leader's Patroni and postmaster; returns its name. */
  killPrimary(opts: { waitForSync?: boolean; timeoutMs?: number } = {}): Promise<string> {
    return this.#pg.killPrimary(opts)
  }

  /** The synchronous standby, once settled. */
  waitForSyncStandby(
    opts: { timeoutMs?: number; maxLagBytes?: number; stableMs?: number } = {},
  ): Promise<LabMemberStatus> {
    return this.#pg.waitForSyncStandby(opts)
  }

  /** Pauses WAL replay (maintenance mode first); returns the members paused. */
  pauseReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    return this.#gray.pauseReplay(memberName, opts)
  }

  /** Resumes WAL replay and leaves maintenance mode; returns the members resumed. */
  resumeReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    return this.#gray.resumeReplay(memberName, opts)
  }

  /** kill -9 of a member (or `graceful`: SIGTERM to Patroni; a frozen member is thawed first). */
  async stopMember(name: string, opts: { graceful?: boolean; timeoutMs?: number } = {}): Promise<void> {
    if (opts.graceful && this.#gray.frozenMembers().includes(name)) await this.#gray.thawMember(name)
    return this.#pg.stopMember(name, opts)
  }

  /** Starts a member again and waits until it streams (re-cloned if it diverged). */
  startMember(name: string, opts: StartMemberOptions = {}): Promise<StartMemberResult> {
    return this.#rejoin.startMember(name, opts)
  }

  /** The startMember() watch for the members that kept running. */
  rejoinReplicas(
    opts: { timeoutMs?: number; reinitializeAfterMs?: number } = {},
  ): Promise<StartMemberResult[]> {
    return this.#rejoin.rejoinReplicas(opts)
  }

  /** SIGSTOP of a member's Patroni, postmaster and every postmaster descendant. */
  freezeMember(name: string, opts: { timeoutMs?: number } = {}): Promise<FrozenMember> {
    return this.#gray.freezeMember(name, opts)
  }

  /** freezeMember() of the leader; returns its name. */
  freezePrimary(opts: { timeoutMs?: number } = {}): Promise<string> {
    return this.#gray.freezePrimary(opts)
  }

  /** SIGCONT of a frozen member: children, postmaster, then Patroni. */
  thawMember(name: string): Promise<void> {
    return this.#gray.thawMember(name)
  }

  /** SIGSTOP of etcd. */
  freezeDcs(opts: { timeoutMs?: number } = {}): Promise<void> {
    return this.#gray.freezeDcs(opts)
  }

  /** SIGCONT of etcd. */
  thawDcs(): Promise<void> {
    return this.#gray.thawDcs()
  }

  /** Members frozen and not thawed yet. */
  frozenMembers(): string[] {
    return this.#gray.frozenMembers()
  }

  /** A maintenance freeze: default_transaction_read_only in Patroni's dynamic configuration. */
  setReadOnly(on: boolean, opts: { timeoutMs?: number } = {}): Promise<void> {
    return this.#gray.setReadOnly(on, opts)
  }

  /** Planned switchover (to `candidate` when given); resolves with the new leader. */
  switchover(opts: { candidate?: string; timeoutMs?: number } = {}): Promise<LabMemberStatus> {
    return this.#pg.switchover(opts)
  }

  /** One SQL statement through psql on a member (the leader by default); rows as text. */
  sql(text: string, memberName?: string): Promise<string[][]> {
    return this.#pg.sql(text, memberName)
  }

  // ---------------------------------------------------------------- Redis

  /** The Redis server believed to be the primary. */
  get redis(): RedisAddress {
    return this.#redis.redis
  }

  /** Every Redis server (not the Redis Cluster's nodes). */
  get redisNodes(): Array<RedisAddress & { name: string; pid?: number }> {
    return this.#redis.redisNodes
  }

  /** The fixed Redis endpoint (`redisReplica: true`), or undefined. */
  get redisEndpoint(): RedisAddress | undefined {
    return this.#redis.redisEndpoint
  }

  get sentinel(): SentinelInfo | undefined {
    return this.#redis.sentinel
  }

  /** SIGSTOP of the Redis primary. */
  pauseRedis(): Promise<void> {
    return this.#redis.pauseRedis()
  }

  /** SIGCONT of the Redis primary. */
  resumeRedis(): Promise<void> {
    return this.#redis.resumeRedis()
  }

  /** kill -9 of the Redis primary. */
  killRedis(): Promise<void> {
    return this.#redis.killRedis()
  }

  /** Starts the Redis primary again on its port. */
  restartRedis(): Promise<void> {
    return this.#redis.restartRedis()
  }

  /** Starts any stopped Redis server again, or a Redis Cluster node ('cluster1'). */
  restartRedisNode(name: string): Promise<void> {
    if (this.#cluster.has(name)) return this.#cluster.restartNode(name)
    return this.#redis.restartRedisNode(name)
  }

  /** (Sentinel) kill -9 of the sentinels' master. */
  killRedisPrimary(): Promise<RedisAddress & { name: string }> {
    return this.#redis.killRedisPrimary()
  }

  /** (Sentinel) the master address according to the first sentinel that answers. */
  sentinelMaster(): Promise<RedisAddress> {
    return this.#redis.sentinelMaster()
  }

  /** (Sentinel) waits until a quorum names another master; updates `redis`. */
  waitForRedisFailover(opts: { not?: number; timeoutMs?: number } = {}): Promise<RedisAddress> {
    return this.#redis.waitForRedisFailover(opts)
  }

  /** Promotes the replica and makes the old primary its replica (REPLICAOF). */
  demoteRedisPrimary(
    opts: { dropConnections?: boolean; timeoutMs?: number } = {},
  ): Promise<{ demoted: string; promoted: string; seconds: number }> {
    return this.#redis.demoteRedisPrimary(opts)
  }

  /** One Redis command to a server of the lab (the primary by default). */
  redisCommand(args: string[], port?: number, timeoutMs?: number): Promise<RespValue> {
    return this.#redis.redisCommand(args, port, timeoutMs)
  }

  // ---------------------------------------------------------------- Redis Cluster

  /** `{ nodes: [{ name, host, port, role, pid? }] }` (`redisCluster: true`), or undefined. */
  get redisCluster(): RedisClusterInfo | undefined {
    this.#life.refresh()
    return this.#cluster.info
  }

  /** CLUSTER FAILOVER on the replica of a master (a name, or the master of a key's slot). */
  failoverRedisClusterMaster(
    nameOrSlotKey?: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<RedisClusterFailover> {
    return this.#cluster.failoverMaster(nameOrSlotKey, opts)
  }

  /** kill -9 of a master; resolves once its replica took over. */
  killRedisClusterMaster(
    nameOrSlotKey?: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<RedisClusterFailover> {
    return this.#cluster.killMaster(nameOrSlotKey, opts)
  }
}
