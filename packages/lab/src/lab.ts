import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import {
  connectionString as buildConnectionString,
  checkSocketDir,
  etcdArgs,
  HOST,
  PG_BIN_DIR,
  patroniConfig,
  randomPassword,
  redisArgs,
  SENTINEL_MASTER_NAME,
  scopeFor,
  sentinelConf,
} from './config.js'
import type { LabContext } from './context.js'
import { continueTree, stopTree } from './freeze.js'
import { ensurePackages, requirements } from './packages.js'
import { defaultRegistryDir, PortAllocator } from './ports.js'
import {
  checkReachable,
  killLabSync,
  postgresUser,
  type RunAs,
  serverPids,
  spawnServer,
  teardown,
  WATCHDOG_SOURCE,
} from './procs.js'
import { type RedisClusterFailover, type RedisClusterInfo, RedisClusterPart } from './redis-cluster.js'
import { ENDPOINT_SOURCE } from './redis-endpoint.js'
import { parseInfo, RespError, type RespValue, redisCommand } from './resp.js'
import {
  type LabState,
  type MemberState,
  type RedisNodeState,
  readState,
  STATE_VERSION,
  writeState,
} from './state.js'
import {
  descendants,
  errorMessage,
  isProcessAlive,
  readPostmasterPid,
  signalPid,
  signalTree,
  waitFor,
  waitForExit,
  waitUntilRefused,
} from './util.js'

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
  /** Start a Redis server. Default true (forced on by `sentinel`). */
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

export interface LabMember {
  name: string
  host: string
  /** PostgreSQL port. */
  port: number
  /** Patroni REST API base URL. */
  apiUrl: string
}

/** One member as Patroni's GET /cluster reports it (Patroni 3.0.2 field names). */
export interface ClusterMember {
  name: string
  role: 'leader' | 'replica' | 'sync_standby' | 'standby_leader' | 'quorum_standby' | (string & {})
  /** 'running', 'streaming' (Patroni >= 3.0.3 for replicas), 'stopped', 'starting', ... */
  state: string
  api_url: string
  host?: string
  port?: number
  timeline?: number
  /** Replication lag in bytes behind the leader's last known position; absent on the leader. */
  lag?: number | 'unknown'
  tags?: Record<string, unknown>
  pending_restart?: boolean
}

export interface ClusterInfo {
  members: ClusterMember[]
  pause?: boolean
  scheduled_switchover?: unknown
}

/** A lab member with what /cluster says about it right now. */
export interface LabMemberStatus extends LabMember {
  role: ClusterMember['role']
  state: string
  lag?: number | 'unknown'
  timeline?: number
}

export interface StartMemberOptions {
  /** Wait until the member streams from the leader (or leads). Default true. */
  wait?: boolean
  /** Bound of the whole wait, reinitialization included. Default: the lab's readyTimeoutMs (90 000). */
  timeoutMs?: number
  /**
   * Re-clone the member from the leader (POST /reinitialize) when it is not streaming this
   * long after its start, whatever the reason. Default 20 000 ms. A member whose log shows
   * a diverged timeline, or whose state is 'start failed', is re-cloned at once.
   */
  reinitializeAfterMs?: number
}

export interface StartMemberResult {
  name: string
  /** What the member came back as ('unknown' with `wait: false`). */
  role: 'leader' | 'replica' | 'unknown'
  /** True when the lab had to re-clone it with POST /reinitialize. */
  reinitialized: boolean
  /** Why it was reinitialized. */
  reason?: string
  /** Seconds from the spawn to streaming. */
  seconds: number
}

/** What freezeMember() stopped. */
export interface FrozenMember {
  name: string
  /** Patroni's PID. */
  patroni: number
  postmaster?: number
  /** The postmaster's descendants (backends, walsenders, walreceiver, checkpointer...). */
  children: number[]
  /** Every PID stopped: Patroni (and its process group), the postmaster, its descendants. */
  pids: number[]
}

export interface RedisAddress {
  host: string
  port: number
}

export interface SentinelInfo {
  sentinels: RedisAddress[]
  name: string
}

const REPLICA_ROLES = new Set(['replica', 'sync_standby', 'quorum_standby'])
const RUNNING_STATES = new Set(['running', 'streaming'])

/** Processes started by labs of this process, killed synchronously if the process exits. */
const ownedLabs = new Set<Lab>()
let hooksInstalled = false

function onProcessExit(): void {
  for (const lab of ownedLabs) lab.killNow()
}

function onSignal(signal: NodeJS.Signals): void {
  onProcessExit()
  removeHooks()
  // Re-raise so that the default action (or whoever else listens) still happens.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
}

const signalHandlers: Partial<Record<NodeJS.Signals, () => void>> = {}

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  process.on('exit', onProcessExit)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => onSignal(sig)
    signalHandlers[sig] = handler
    process.on(sig, handler)
  }
}

function removeHooks(): void {
  if (!hooksInstalled) return
  hooksInstalled = false
  process.off('exit', onProcessExit)
  for (const [sig, handler] of Object.entries(signalHandlers)) {
    if (handler) process.off(sig, handler)
    delete signalHandlers[sig as NodeJS.Signals]
  }
}

/**
 * A running lab. Created by startLab(), or rehydrated from its state file with
 * Lab.fromState() (the CLI does that on every invocation).
 */
export class Lab {
  readonly baseDir: string
  #state: LabState
  #log: (line: string) => void
  #runAs: RunAs | undefined
  #readyTimeoutMs: number
  #lastLeader: string | undefined
  #lastEndpoint = 0
  /** Log sizes of the other members at the last stopMember(): where rejoinReplicas() reads from. */
  #logMarks = new Map<string, number>()
  #down = false
  #owned: boolean
  /** What the parts of the lab get from its lifecycle (see LabContext). */
  readonly #ctx: LabContext
  readonly #redisCluster: RedisClusterPart

  /** Use startLab() or Lab.fromState(). */
  constructor(
    state: LabState,
    opts: { log?: (line: string) => void; readyTimeoutMs?: number; owned?: boolean } = {},
  ) {
    this.#state = state
    this.baseDir = state.baseDir
    this.#log = opts.log ?? (() => {})
    this.#readyTimeoutMs = opts.readyTimeoutMs ?? 90_000
    // Only etcd and Patroni need the postgres user; a Redis-only lab runs without it.
    this.#runAs = state.members.length > 0 ? postgresUser() : undefined
    this.#owned = opts.owned ?? false
    const lab = this
    this.#ctx = {
      baseDir: this.baseDir,
      get state() {
        return lab.#state
      },
      refresh: () => this.#refresh(),
      save: () => this.#save(),
      log: (line) => this.#log(line),
      readyTimeoutMs: this.#readyTimeoutMs,
      recordPid: (pid) => this.#recordPid(pid),
    }
    this.#redisCluster = new RedisClusterPart(this.#ctx)
    if (this.#owned) {
      ownedLabs.add(this)
      installHooks()
    }
  }

  /** Rehydrates a lab from its state (or the folder holding lab.json). The processes keep running. */
  static fromState(
    state: LabState,
    opts: { log?: (line: string) => void; readyTimeoutMs?: number } = {},
  ): Lab {
    return new Lab(state, opts)
  }

  /** A copy of the state (what lab.json holds). */
  get state(): LabState {
    this.#refresh()
    return structuredClone(this.#state)
  }

  get patroni(): { endpoints: string[]; scope: string } {
    return { endpoints: this.#state.members.map((m) => apiUrl(m)), scope: this.#state.scope }
  }

  get members(): LabMember[] {
    return this.#state.members.map((m) => ({ name: m.name, host: HOST, port: m.port, apiUrl: apiUrl(m) }))
  }

  /** Credentials a client uses (password auth, scram-sha-256, on 127.0.0.1). */
  get postgres(): { user: string; password: string; database: string } {
    const p = this.#state.postgres
    return { user: p.user, password: p.password, database: p.database }
  }

  /** Seconds startLab() took until the lab was ready. */
  get bootSeconds(): number | undefined {
    return this.#state.bootSeconds
  }

  /**
   * postgres://user:password@127.0.0.1:port/postgres for a member; without a name, for the
   * leader as last observed by this lab (startLab, cluster(), primary(), waitForPrimary(), ...).
   */
  connectionString(memberName?: string): string {
    const name = memberName ?? this.#lastLeader ?? this.#state.members[0]?.name
    const member = this.#state.members.find((m) => m.name === name)
    if (!member) throw new Error(`no such member: ${String(name)}`)
    return buildConnectionString(this.postgres, HOST, member.port)
  }

  /** The Redis server believed to be the primary (updated by waitForRedisFailover()). */
  get redis(): RedisAddress {
    this.#refresh()
    const node = this.#redisPrimaryNode()
    return { host: HOST, port: node?.port ?? 0 }
  }

  get redisNodes(): Array<RedisAddress & { name: string; pid?: number }> {
    this.#refresh()
    return this.#state.redis.map((r) => ({
      name: r.name,
      host: HOST,
      port: r.port,
      ...(r.pid ? { pid: r.pid } : {}),
    }))
  }

  /**
   * The Redis Cluster (`redisCluster: true`): `{ nodes: [{ name, host, port, role, pid? }] }`,
   * startup nodes for ioredis.Cluster; roles as of the lab's last look. Undefined without one.
   */
  get redisCluster(): RedisClusterInfo | undefined {
    this.#refresh()
    return this.#redisCluster.info
  }

  /**
   * The fixed Redis endpoint (`redisReplica: true`): a TCP proxy that connects each new
   * connection to the current Redis primary, like a managed service's primary endpoint.
   */
  get redisEndpoint(): RedisAddress | undefined {
    this.#refresh()
    const e = this.#state.redisEndpoint
    return e ? { host: HOST, port: e.port } : undefined
  }

  get sentinel(): SentinelInfo | undefined {
    const s = this.#state.sentinel
    if (!s) return undefined
    return { sentinels: s.sentinels.map((x) => ({ host: HOST, port: x.port })), name: s.masterName }
  }

  /** Every PID this lab started (servers, watchdog), alive or not. */
  pids(): number[] {
    this.#refresh()
    return [...this.#state.startedPids]
  }

  /** PIDs of the postmasters running now (started by Patroni, not by the lab). */
  postmasterPids(): number[] {
    this.#refresh()
    return serverPids(this.#state).postmasters
  }

  // ---------------------------------------------------------------- Patroni

  /** GET /cluster from the first member that answers. */
  async cluster(): Promise<ClusterInfo> {
    const members = this.#state.members
    if (members.length === 0) throw new Error('this lab has no Patroni members (nodes: 0)')
    let lastError: unknown
    // From the member that answered last; frozen members last (they accept and never answer).
    const frozen = this.#state.frozen?.members ?? []
    const order = members
      .map((_, i) => (this.#lastEndpoint + i) % members.length)
      .sort((a, b) => Number(frozen.includes(members[a]!.name)) - Number(frozen.includes(members[b]!.name)))
    for (const index of order) {
      const member = members[index]!
      try {
        const res = await fetch(`${apiUrl(member)}/cluster`, { signal: AbortSignal.timeout(1500) })
        if (!res.ok) throw new Error(`GET /cluster answered ${res.status}`)
        const body = (await res.json()) as ClusterInfo
        this.#lastEndpoint = index
        const leader = body.members.find((m) => m.role === 'leader' || m.role === 'standby_leader')
        if (leader) this.#lastLeader = leader.name
        return body
      } catch (err) {
        lastError = err
      }
    }
    throw new Error(`no Patroni endpoint answered GET /cluster: ${errorMessage(lastError)}`, {
      cause: lastError,
    })
  }

  /** The current leader according to /cluster, or undefined. */
  async primary(): Promise<LabMemberStatus | undefined> {
    const cluster = await this.cluster()
    const leader = cluster.members.find((m) => m.role === 'leader' || m.role === 'standby_leader')
    return leader ? this.#status(leader) : undefined
  }

  /** Members that /cluster shows as running replicas (role replica/sync_standby, lag known). */
  async replicas(): Promise<LabMemberStatus[]> {
    const cluster = await this.cluster()
    return cluster.members
      .filter((m) => REPLICA_ROLES.has(m.role) && RUNNING_STATES.has(m.state) && typeof m.lag === 'number')
      .map((m) => this.#status(m))
  }

  /**
   * Resolves with the leader once /cluster shows a running leader other than `not` whose
   * Patroni answers 200 on GET /primary.
   */
  async waitForPrimary(opts: { not?: string; timeoutMs?: number } = {}): Promise<LabMemberStatus> {
    const timeoutMs = opts.timeoutMs ?? this.#readyTimeoutMs
    return waitFor(
      opts.not ? `a leader other than ${opts.not}` : 'a leader',
      async () => {
        const leader = await this.primary()
        if (!leader || leader.name === opts.not || leader.state !== 'running') return undefined
        const res = await fetch(`${leader.apiUrl}/primary`, { signal: AbortSignal.timeout(1000) })
        await res.body?.cancel()
        if (res.status !== 200) return undefined
        // Patroni reports the new role as soon as it asks for promotion: trust SQL.
        const rows = await this.sql('select pg_is_in_recovery()', leader.name)
        return rows[0]?.[0] === 'f' ? leader : undefined
      },
      { timeoutMs, intervalMs: 100 },
    )
  }

  /**
   * Resolves once at least `n` replicas run with a known lag in /cluster AND the leader's
   * pg_stat_replication shows each of them 'streaming'.
   */
  async waitForReplicas(n: number, opts: { timeoutMs?: number } = {}): Promise<LabMemberStatus[]> {
    const timeoutMs = opts.timeoutMs ?? this.#readyTimeoutMs
    return waitFor(
      `${n} streaming replica(s)`,
      async () => {
        const cluster = await this.cluster()
        const leader = cluster.members.find((m) => m.role === 'leader' && m.state === 'running')
        if (!leader) return undefined
        const replicas = cluster.members.filter(
          (m) => REPLICA_ROLES.has(m.role) && RUNNING_STATES.has(m.state) && typeof m.lag === 'number',
        )
        if (replicas.length < n) return undefined
        const rows = await this.sql(
          "select application_name from pg_stat_replication where state = 'streaming'",
          leader.name,
        )
        const streaming = new Set(rows.map((r) => r[0]))
        const confirmed = replicas.filter((r) => streaming.has(r.name))
        return confirmed.length >= n ? confirmed.map((m) => this.#status(m)) : undefined
      },
      { timeoutMs, intervalMs: 250 },
    )
  }

  /** Waits until a member shows `state` 'running' in /cluster (optionally with a role). */
  async waitForMember(
    name: string,
    opts: { role?: 'leader' | 'replica'; timeoutMs?: number } = {},
  ): Promise<LabMemberStatus> {
    this.#member(name)
    return waitFor(
      `member ${name} running${opts.role ? ` as ${opts.role}` : ''}`,
      async () => {
        const cluster = await this.cluster()
        const m = cluster.members.find((x) => x.name === name)
        if (!m || !RUNNING_STATES.has(m.state)) return undefined
        if (opts.role === 'leader' && m.role !== 'leader') return undefined
        if (opts.role === 'replica' && !(REPLICA_ROLES.has(m.role) && typeof m.lag === 'number'))
          return undefined
        return this.#status(m)
      },
      { timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs, intervalMs: 200 },
    )
  }

  /**
   * kill -9 the leader's Patroni and its postmaster (whole process groups). Returns its name.
   * In a `synchronousMode` lab it first waits for a settled synchronous standby
   * (waitForSyncStandby()), because Patroni 3.0.2 can stall with no leader at all ("not the
   * healthiest node") when the leader dies right after the sync role moved to a member that
   * is still catching up. `waitForSync: false` kills at once (default: true in synchronous
   * mode, ignored otherwise).
   */
  async killPrimary(opts: { waitForSync?: boolean; timeoutMs?: number } = {}): Promise<string> {
    this.#refresh()
    if (this.#state.synchronousMode && opts.waitForSync !== false) {
      const sync = await this.waitForSyncStandby({ timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs })
      this.#log(`sync standby ${sync.name} settled: killing the leader`)
    }
    const leader = await this.primary()
    if (!leader) throw new Error('there is no leader to kill')
    await this.stopMember(leader.name)
    return leader.name
  }

  /**
   * Resolves with the synchronous standby once it is settled: `/cluster` shows a running
   * leader and a `sync_standby` with lag <= `maxLagBytes` (default 0), the leader's
   * `pg_stat_replication` lists it `streaming` with `sync_state = 'sync'`, and the same member
   * passed both checks for `stableMs` (default 2 000 ms: one Patroni loop, so at least two
   * consecutive polls that each saw fresh lag figures).
   */
  async waitForSyncStandby(
    opts: { timeoutMs?: number; maxLagBytes?: number; stableMs?: number } = {},
  ): Promise<LabMemberStatus> {
    const maxLag = opts.maxLagBytes ?? 0
    const stableMs = opts.stableMs ?? 2000
    let candidate: string | undefined
    let since = 0
    let polls = 0
    return waitFor(
      'a settled sync_standby',
      async () => {
        const cluster = await this.cluster()
        const leader = cluster.members.find((m) => m.role === 'leader' && m.state === 'running')
        const sync = cluster.members.find(
          (m) =>
            m.role === 'sync_standby' &&
            RUNNING_STATES.has(m.state) &&
            typeof m.lag === 'number' &&
            m.lag <= maxLag,
        )
        let ok = false
        if (leader && sync) {
          const rows = await this.sql(
            `select 1 from pg_stat_replication where application_name = '${sync.name}' and state = 'streaming' and sync_state = 'sync'`,
            leader.name,
          )
          ok = rows.length > 0
        }
        if (!ok || !sync) {
          candidate = undefined
          return undefined
        }
        if (candidate !== sync.name) {
          candidate = sync.name
          since = Date.now()
          polls = 1
          return undefined
        }
        polls++
        return polls >= 2 && Date.now() - since >= stableMs ? this.#status(sync) : undefined
      },
      { timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs, intervalMs: 250 },
    )
  }

  /**
   * Pauses WAL replay on a replica (default: every running replica) and returns their names.
   * Patroni 3 resumes paused replay on PostgreSQL 14+ in every HA loop unless the cluster is
   * in maintenance mode, so this first sets `PATCH /config {"pause": true}` and waits until
   * every running member's `GET /patroni` says `pause: true`; then `pg_wal_replay_pause()`,
   * and waits until `pg_get_wal_replay_pause_state()` is `paused`. While paused, Patroni does
   * no failover: call resumeReplay() before any chaos.
   */
  async pauseReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    const targets = memberName ? [this.#member(memberName).name] : (await this.replicas()).map((r) => r.name)
    if (targets.length === 0) throw new Error('there is no running replica to pause')
    await this.#setMaintenance(true, timeoutMs)
    for (const name of targets) {
      const rows = await this.sql('select pg_is_in_recovery()', name)
      if (rows[0]?.[0] !== 't') throw new Error(`${name} is not a replica (not in recovery)`)
      await this.sql('select pg_wal_replay_pause()', name)
      await waitFor(
        `replay paused on ${name}`,
        async () => {
          const st = await this.sql('select pg_get_wal_replay_pause_state()', name)
          return st[0]?.[0] === 'paused' ? true : undefined
        },
        { timeoutMs, intervalMs: 50 },
      )
    }
    this.#log(`replay paused on ${targets.join(', ')} (maintenance mode on)`)
    return targets
  }

  /**
   * Resumes WAL replay (`pg_wal_replay_resume()`) on a member (default: every member in
   * recovery), then leaves maintenance mode (`PATCH /config {"pause": false}`) and waits until
   * every running member's `GET /patroni` no longer says `pause: true`. Returns the members
   * whose replay was resumed.
   */
  async resumeReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    const names = memberName ? [this.#member(memberName).name] : this.#state.members.map((m) => m.name)
    const resumed: string[] = []
    for (const name of names) {
      try {
        const rows = await this.sql('select pg_is_in_recovery()', name)
        if (rows[0]?.[0] !== 't') continue
        await this.sql('select pg_wal_replay_resume()', name)
        resumed.push(name)
      } catch (err) {
        // A member that is down has nothing to resume; a named one must answer.
        if (memberName) throw err
      }
    }
    await this.#setMaintenance(false, timeoutMs)
    this.#log(`replay resumed on ${resumed.join(', ') || 'no member'} (maintenance mode off)`)
    return resumed
  }

  /** PATCH /config {"pause": on}, then wait until every running member reports it. */
  async #setMaintenance(on: boolean, timeoutMs: number): Promise<void> {
    await this.#patchConfig({ pause: on }, timeoutMs)
    await waitFor(
      `every running member to report pause=${on}`,
      async () => {
        for (const m of this.#state.members) {
          if (!m.pid || !isProcessAlive(m.pid)) continue
          const res = await fetch(`${apiUrl(m)}/patroni`, { signal: AbortSignal.timeout(1500) })
          const st = (await res.json()) as { pause?: boolean }
          if (Boolean(st.pause) !== on) return undefined
        }
        return true
      },
      { timeoutMs, intervalMs: 100 },
    )
  }

  /**
   * Stops a member. Default: kill -9 of its Patroni and its postmaster (a crash; PostgreSQL's
   * shared memory is freed when it starts again). `graceful: true`: SIGTERM to Patroni, which
   * stops PostgreSQL (fast mode) and hands the leader key over if it held it.
   */
  async stopMember(name: string, opts: { graceful?: boolean; timeoutMs?: number } = {}): Promise<void> {
    this.#refresh()
    const member = this.#member(name)
    for (const other of this.#state.members)
      if (other.name !== name) this.#logMarks.set(other.name, fileSize(other.logPath))
    const frozen = this.#state.frozen?.members.includes(name) ?? false
    // A stopped process acts on no signal but SIGKILL: a graceful stop needs it running again.
    if (frozen && opts.graceful) await this.thawMember(name)
    const pm = readPostmasterPid(member.dataDir)
    const postmaster = pm && isProcessAlive(pm.pid) ? pm.pid : undefined
    // Listed before the kill: a frozen postmaster's children would stay stopped as orphans.
    const children = postmaster ? descendants(postmaster) : []
    if (opts.graceful) {
      if (member.pid) signalTree(member.pid, 'SIGTERM', this.baseDir)
      const left = await waitForExit(
        [...(member.pid ? [member.pid] : []), ...(postmaster ? [postmaster] : [])],
        opts.timeoutMs ?? 60_000,
      )
      if (left.length > 0)
        throw new Error(`member ${name} did not stop within the timeout (pids ${left.join(' ')})`)
    } else {
      if (member.pid) signalTree(member.pid, 'SIGKILL', this.baseDir)
      if (postmaster) signalTree(postmaster, 'SIGKILL', this.baseDir)
      for (const pid of children) signalPid(pid, 'SIGKILL', this.baseDir)
      const left = await waitForExit(
        [...(member.pid ? [member.pid] : []), ...(postmaster ? [postmaster] : []), ...children],
        opts.timeoutMs ?? 10_000,
      )
      if (left.length > 0) throw new Error(`member ${name} did not die (pids ${left.join(' ')})`)
    }
    await waitUntilRefused(`the stopped ${name}`, [member.apiPort, member.port])
    this.#log(`stopped ${name}${opts.graceful ? ' (graceful)' : ' (kill -9)'}`)
    delete member.pid
    if (this.#state.frozen) this.#state.frozen.members = this.#state.frozen.members.filter((m) => m !== name)
    this.#save()
  }

  /**
   * Starts a stopped member's Patroni again. With the default `wait`, resolves once it is back
   * for real: a replica that the leader's `pg_stat_replication` lists as `streaming` (or the
   * running, writable leader, when it took the leader key). A member stuck outside the
   * cluster's history (a primary killed with WAL its successor never got, which Patroni 3.0.2
   * sometimes starts as a standby without pg_rewind: "requested starting point ... is not in
   * this server's history") is re-cloned from the leader with `POST /reinitialize`
   * (`{"force": true}`): at once when its log shows that line or `/cluster` says
   * `start failed`, else after `reinitializeAfterMs` without streaming. `wait: false`:
   * resolve as soon as the process exists.
   */
  async startMember(name: string, opts: StartMemberOptions = {}): Promise<StartMemberResult> {
    this.#refresh()
    const member = this.#member(name)
    if (member.pid && isProcessAlive(member.pid))
      throw new Error(`member ${name} is already running (pid ${member.pid})`)
    const logOffset = fileSize(member.logPath)
    const started = performance.now()
    await this.#spawnPatroni(member)
    this.#log(`started ${name} (pid ${member.pid})`)
    if (opts.wait === false) return { name, role: 'unknown', reinitialized: false, seconds: 0 }
    return this.#bringBack(name, started, logOffset, {
      timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs,
      reinitializeAfterMs: opts.reinitializeAfterMs ?? 20_000,
    })
  }

  /**
   * The same watch as startMember(), for the members that kept running: after a kill of the
   * primary under write load, a replica that had received WAL the new leader never got has
   * diverged too. For every member whose Patroni runs and that is not the leader, waits until
   * it streams from the leader, re-cloning it (POST /reinitialize) when its log shows a
   * divergence line written since the last stopMember()/killPrimary() of this Lab, or it is
   * not streaming `reinitializeAfterMs` (default 10 000 ms) after this call. Resolves with one
   * result per member (`seconds` counted from this call).
   */
  async rejoinReplicas(
    opts: { timeoutMs?: number; reinitializeAfterMs?: number } = {},
  ): Promise<StartMemberResult[]> {
    this.#refresh()
    const leader = await this.waitForPrimary({ timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs })
    const started = performance.now()
    const others = this.#state.members.filter(
      (m) => m.name !== leader.name && m.pid !== undefined && isProcessAlive(m.pid),
    )
    return Promise.all(
      others.map((m) =>
        this.#bringBack(m.name, started, this.#logMarks.get(m.name) ?? fileSize(m.logPath), {
          timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs,
          reinitializeAfterMs: opts.reinitializeAfterMs ?? 10_000,
        }),
      ),
    )
  }

  async #bringBack(
    name: string,
    started: number,
    logOffset: number,
    opts: { timeoutMs: number; reinitializeAfterMs: number },
  ): Promise<StartMemberResult> {
    const member = this.#member(name)
    let reinitialized = false
    let reason: string | undefined
    const role = await waitFor(
      `member ${name} to stream from the leader (or lead)`,
      async () => {
        const probe = await this.#rejoinProbe(name)
        if (probe.done) return probe.role
        if (reinitialized) return undefined
        const elapsed = performance.now() - started
        const diverged = logShowsDivergence(member.logPath, logOffset)
        if (diverged) reason = diverged
        else if (probe.state === 'start failed') reason = `state '${probe.state}'`
        else if (elapsed >= opts.reinitializeAfterMs && probe.state !== 'creating replica')
          reason = `not streaming after ${Math.round(elapsed)} ms (state '${probe.state ?? 'absent'}')`
        else return undefined
        // Needs a leader to clone from; 503 while it has none or Patroni is busy: try again.
        if (!probe.hasLeader) return undefined
        if (await this.#reinitialize(name)) {
          reinitialized = true
          this.#log(`${name} stuck (${reason}): POST /reinitialize (force)`)
        }
        return undefined
      },
      { timeoutMs: opts.timeoutMs, intervalMs: 250 },
    )
    const seconds = Math.round((performance.now() - started) / 100) / 10
    this.#log(`${name} back as ${role} in ${seconds} s${reinitialized ? ' (reinitialized)' : ''}`)
    return { name, role, reinitialized, seconds, ...(reason && reinitialized ? { reason } : {}) }
  }

  /** Is `name` the running writable leader, or a replica streaming from the leader? */
  async #rejoinProbe(
    name: string,
  ): Promise<
    { done: true; role: 'leader' | 'replica' } | { done: false; state?: string; hasLeader: boolean }
  > {
    const cluster = await this.cluster()
    const m = cluster.members.find((x) => x.name === name)
    const leader = cluster.members.find((x) => x.role === 'leader' && x.state === 'running')
    if (!leader) return { done: false, ...(m ? { state: m.state } : {}), hasLeader: false }
    if (m && leader.name === name) {
      const rows = await this.sql('select pg_is_in_recovery()', name).catch(() => [])
      if (rows[0]?.[0] === 'f') return { done: true, role: 'leader' }
      return { done: false, state: m.state, hasLeader: true }
    }
    if (m && REPLICA_ROLES.has(m.role) && RUNNING_STATES.has(m.state)) {
      const rows = await this.sql(
        `select 1 from pg_stat_replication where application_name = '${name}' and state = 'streaming'`,
        leader.name,
      ).catch(() => [])
      if (rows.length > 0) return { done: true, role: 'replica' }
    }
    return { done: false, ...(m ? { state: m.state } : {}), hasLeader: true }
  }

  /** POST /reinitialize {"force": true} on a member; true when Patroni accepted it. */
  async #reinitialize(name: string): Promise<boolean> {
    const member = this.#member(name)
    try {
      const res = await fetch(`${apiUrl(member)}/reinitialize`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ force: true }),
        signal: AbortSignal.timeout(5000),
      })
      const text = await res.text()
      if (!res.ok) this.#log(`POST /reinitialize on ${name}: ${res.status} ${text.trim()}`)
      return res.ok
    } catch (err) {
      this.#log(`POST /reinitialize on ${name}: ${errorMessage(err)}`)
      return false
    }
  }

  // ---------------------------------------------------------------- gray failures (SIGSTOP)

  /**
   * Freezes a member like a frozen VM: SIGSTOP of its Patroni (and Patroni's process group),
   * then its postmaster, then every descendant of the postmaster (backends, walsenders,
   * walreceiver, checkpointer...), listed again until no new one appears. Nothing is reset:
   * open connections stay open and new TCP connections still complete (the kernel answers the
   * handshake), but nothing answers. Patroni's leader key expires after the TTL (10 s) and a
   * replica is promoted. Resolves once every process is stopped, with their PIDs.
   */
  async freezeMember(name: string, opts: { timeoutMs?: number } = {}): Promise<FrozenMember> {
    this.#refresh()
    const member = this.#member(name)
    if (this.#state.frozen?.members.includes(name)) throw new Error(`member ${name} is already frozen`)
    if (!member.pid || !isProcessAlive(member.pid)) throw new Error(`member ${name} is not running`)
    const timeoutMs = opts.timeoutMs ?? 5000
    // rejoinReplicas() reads the members' logs from here on (divergence after the failover).
    for (const m of this.#state.members) this.#logMarks.set(m.name, fileSize(m.logPath))
    // Patroni first: it must not see its PostgreSQL hang and act on it (restart, demote).
    const patroni = await stopTree(member.pid, this.baseDir, { group: true, timeoutMs })
    const pm = readPostmasterPid(member.dataDir)
    const postmaster = pm && isProcessAlive(pm.pid) ? pm.pid : undefined
    const children = postmaster ? (await stopTree(postmaster, this.baseDir, { timeoutMs })).slice(1) : []
    const frozen = this.#frozen()
    frozen.members.push(name)
    this.#save()
    this.#log(
      `froze ${name}: patroni ${patroni.join(' ')}, postmaster ${postmaster ?? '-'}, ${children.length} child(ren)`,
    )
    return {
      name,
      patroni: patroni[0]!,
      ...(postmaster ? { postmaster } : {}),
      children,
      pids: [...patroni, ...(postmaster ? [postmaster] : []), ...children],
    }
  }

  /** Freezes the current leader (freezeMember()); returns its name. */
  async freezePrimary(opts: { timeoutMs?: number } = {}): Promise<string> {
    const leader = await this.primary()
    if (!leader) throw new Error('there is no leader to freeze')
    await this.freezeMember(leader.name, opts)
    return leader.name
  }

  /**
   * SIGCONT of a frozen member in the reverse order: the postmaster's descendants, the
   * postmaster, then Patroni. The member carries on where it stopped: a statement that was
   * waiting is answered; Patroni then finds out that another member holds the leader key and
   * demotes it (Patroni 3.0.2 sometimes takes the key back instead; see FACTS.md). Resolves at
   * once (it does not wait for the member to rejoin: use rejoinReplicas() or waitForReplicas()).
   */
  async thawMember(name: string): Promise<void> {
    this.#refresh()
    const member = this.#member(name)
    const pm = readPostmasterPid(member.dataDir)
    if (pm && isProcessAlive(pm.pid)) continueTree(pm.pid, this.baseDir)
    if (member.pid) continueTree(member.pid, this.baseDir, { group: true })
    const frozen = this.#frozen()
    frozen.members = frozen.members.filter((m) => m !== name)
    this.#save()
    this.#log(`thawed ${name}`)
  }

  /**
   * SIGSTOP of etcd, the DCS: Patroni can neither read nor renew the leader key. Without
   * `failsafeMode`, Patroni 3.0.2 demotes the leader (PostgreSQL restarted read-only) once its
   * DCS calls fail (about `retry_timeout`, 5 s, to the TTL, 10 s); with it, the leader stays
   * primary while every member answers its POST /failsafe. GET /cluster fails meanwhile.
   */
  async freezeDcs(opts: { timeoutMs?: number } = {}): Promise<void> {
    this.#refresh()
    const etcd = this.#state.etcd
    if (!etcd?.pid || !isProcessAlive(etcd.pid)) throw new Error('this lab has no running etcd')
    await stopTree(etcd.pid, this.baseDir, { group: true, timeoutMs: opts.timeoutMs ?? 5000 })
    this.#frozen().dcs = true
    this.#save()
    this.#log(`froze etcd (pid ${etcd.pid})`)
  }

  /** SIGCONT of etcd. Patroni recovers on its next loop (a leader race when the key expired). */
  async thawDcs(): Promise<void> {
    this.#refresh()
    const etcd = this.#state.etcd
    if (etcd?.pid) continueTree(etcd.pid, this.baseDir, { group: true })
    this.#frozen().dcs = false
    this.#save()
    this.#log('thawed etcd')
  }

  /** Names of the members frozen by freezeMember() and not thawed yet. */
  frozenMembers(): string[] {
    this.#refresh()
    return [...(this.#state.frozen?.members ?? [])]
  }

  /**
   * A maintenance freeze: the database answers every write with SQLSTATE 25006 ("cannot
   * execute ... in a read-only transaction") while it is still the primary
   * (`pg_is_in_recovery()` stays false), on connections that already exist too.
   *
   * How: `default_transaction_read_only = on` in Patroni's dynamic configuration (`PATCH
   * /config {"postgresql": {"parameters": {...}}}`). Patroni writes it into every member's
   * postgresql.conf and reloads (SIGHUP), and each existing session applies a reload before its
   * next command, so pooled connections are affected, as with a provider's server-wide flag.
   * `ALTER DATABASE ... SET` would reach new sessions only; `ALTER SYSTEM` would live on one
   * member only and be lost at a failover (Patroni also advises against it). Being the
   * cluster's setting, it outlives a failover, like the maintenance it stands for.
   * `setReadOnly(false)` removes the parameter (`null`), which existing sessions apply the same
   * way. Resolves once a fresh connection to the leader shows the new value (about 0.3 s here).
   */
  async setReadOnly(on: boolean, opts: { timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    await this.#patchConfig(
      { postgresql: { parameters: { default_transaction_read_only: on ? 'on' : null } } },
      timeoutMs,
    )
    const want = on ? 'on' : 'off'
    const leader = await waitFor(
      `default_transaction_read_only = ${want} on the leader`,
      async () => {
        const leader = await this.primary()
        if (!leader) return undefined
        const rows = await this.sql('show default_transaction_read_only', leader.name)
        return rows[0]?.[0] === want ? leader.name : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
    this.#log(`read-only ${want} (in effect on ${leader})`)
  }

  /** PATCH /config with `body` on the first member that accepts it (frozen members skipped). */
  async #patchConfig(body: unknown, timeoutMs: number): Promise<void> {
    const text = JSON.stringify(body)
    await waitFor(
      `PATCH /config ${text}`,
      async () => {
        for (const m of this.#reachableMembers()) {
          try {
            const res = await fetch(`${apiUrl(m)}/config`, {
              method: 'PATCH',
              headers: { 'content-type': 'application/json' },
              body: text,
              signal: AbortSignal.timeout(2000),
            })
            const answer = await res.text()
            if (res.ok) return true
            if (res.status >= 400 && res.status < 500)
              throw fatal(`PATCH /config on ${m.name}: ${res.status} ${answer.trim()}`)
          } catch (err) {
            if ((err as { fatal?: unknown }).fatal === true) throw err
          }
        }
        return undefined
      },
      { timeoutMs, intervalMs: 250 },
    )
  }

  /** The members in the order to ask them: those not frozen first. */
  #reachableMembers(): MemberState[] {
    const frozen = this.#state.frozen?.members ?? []
    return [
      ...this.#state.members.filter((m) => !frozen.includes(m.name)),
      ...this.#state.members.filter((m) => frozen.includes(m.name)),
    ]
  }

  #frozen(): { members: string[]; dcs: boolean } {
    this.#state.frozen ??= { members: [], dcs: false }
    return this.#state.frozen
  }

  /**
   * Planned switchover through Patroni's REST API (POST /switchover on the leader). Resolves
   * with the new leader once it is running (the candidate, when one is given).
   */
  async switchover(opts: { candidate?: string; timeoutMs?: number } = {}): Promise<LabMemberStatus> {
    const timeoutMs = opts.timeoutMs ?? this.#readyTimeoutMs
    const leader = await this.primary()
    if (!leader) throw new Error('there is no leader to switch over from')
    if (opts.candidate) this.#member(opts.candidate)
    if (opts.candidate === leader.name) throw new Error(`${opts.candidate} is already the leader`)
    const body = JSON.stringify({
      leader: leader.name,
      ...(opts.candidate ? { candidate: opts.candidate } : {}),
    })
    // Patroni refuses a switchover while no healthy candidate exists (e.g. just after a
    // rejoin, before a replica reports its lag): retry that for a while.
    await waitFor(
      'Patroni to accept the switchover',
      async () => {
        const res = await fetch(`${leader.apiUrl}/switchover`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          signal: AbortSignal.timeout(Math.max(5000, timeoutMs)),
        })
        const text = await res.text()
        if (res.status === 200 || res.status === 202) return true
        if (res.status === 412 || res.status === 503)
          throw new Error(`POST /switchover ${res.status}: ${text.trim()}`)
        throw Object.assign(new Error(`POST /switchover ${res.status}: ${text.trim()}`), { fatal: true })
      },
      { timeoutMs, intervalMs: 500 },
    )
    const next = await this.waitForPrimary({ not: leader.name, timeoutMs })
    if (opts.candidate && next.name !== opts.candidate) {
      throw new Error(`switchover made ${next.name} the leader, not ${opts.candidate}`)
    }
    return next
  }

  /**
   * Runs one SQL statement with psql on a member (the current leader by default) and returns
   * the rows as arrays of text (NULL as ''). Throws with psql's message on error.
   */
  async sql(text: string, memberName?: string): Promise<string[][]> {
    let name = memberName
    if (!name) {
      const leader = await this.primary()
      if (!leader) throw new Error('there is no leader to run SQL on')
      name = leader.name
    }
    const member = this.#member(name)
    const p = this.#state.postgres
    const args = [
      '-X',
      '-q',
      '-A',
      '-t',
      '-F',
      '\x1f',
      '-R',
      '\x1e',
      '-v',
      'ON_ERROR_STOP=1',
      '-h',
      HOST,
      '-p',
      String(member.port),
      '-U',
      p.user,
      '-d',
      p.database,
      '-c',
      text,
    ]
    const out = await new Promise<string>((resolvePromise, reject) => {
      execFile(
        `${PG_BIN_DIR}/psql`,
        args,
        {
          env: {
            PATH: process.env.PATH ?? '',
            PGPASSWORD: p.password,
            PGCONNECT_TIMEOUT: '5',
            PGAPPNAME: 'resilient-lab',
          },
          timeout: 30_000,
          maxBuffer: 64 * 1024 * 1024,
        },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`psql on ${name}: ${stderr.trim() || err.message}`))
          else resolvePromise(stdout)
        },
      )
    })
    return parsePsqlOutput(out)
  }

  // ---------------------------------------------------------------- Redis

  /** SIGSTOP the Redis primary: it still accepts TCP connections but never answers. */
  async pauseRedis(): Promise<void> {
    this.#refresh()
    const node = this.#requireRedisPrimary()
    if (!node.pid) throw new Error(`${node.name} is not running`)
    process.kill(node.pid, 'SIGSTOP')
    this.#log(`paused ${node.name} (SIGSTOP ${node.pid})`)
  }

  async resumeRedis(): Promise<void> {
    this.#refresh()
    const node = this.#requireRedisPrimary()
    if (!node.pid) throw new Error(`${node.name} is not running`)
    process.kill(node.pid, 'SIGCONT')
    this.#log(`resumed ${node.name} (SIGCONT ${node.pid})`)
  }

  /** kill -9 the Redis primary. */
  async killRedis(): Promise<void> {
    this.#refresh()
    await this.#killRedisNode(this.#requireRedisPrimary())
  }

  /** Starts the Redis primary again on the same port with the same folder; resolves when it answers PING. */
  async restartRedis(): Promise<void> {
    this.#refresh()
    await this.#restartRedisNode(this.#requireRedisPrimary())
  }

  /**
   * Starts any stopped Redis server of the lab again (by name, e.g. 'redis0', 'redis1', or a
   * Redis Cluster node such as 'cluster0', which rejoins as a replica of its slots' new master).
   */
  async restartRedisNode(name: string): Promise<void> {
    this.#refresh()
    if (this.#redisCluster.has(name)) return this.#redisCluster.restartNode(name)
    const node = this.#state.redis.find((r) => r.name === name)
    if (!node) throw new Error(`no such Redis server: ${name}`)
    await this.#restartRedisNode(node)
  }

  /**
   * (Re)starts a Redis server on its port and folder. With sentinels, a server that is not the
   * sentinels' master comes back as a replica of that master (as Sentinel would make it).
   */
  async #restartRedisNode(node: RedisNodeState): Promise<void> {
    if (node.pid && isProcessAlive(node.pid)) await this.#killRedisNode(node)
    let master = this.#redisPrimaryNode()?.port
    if (this.#state.sentinel) master = (await this.sentinelMaster().catch(() => undefined))?.port ?? master
    await this.#spawnRedis(node, master !== undefined && master !== node.port ? master : undefined)
    await this.#waitForPing(node.port, this.#readyTimeoutMs)
  }

  /** Sentinel mode: kill -9 the server the sentinels call master. Returns its address. */
  async killRedisPrimary(): Promise<RedisAddress & { name: string }> {
    this.#refresh()
    const addr = await this.sentinelMaster()
    const node = this.#state.redis.find((r) => r.port === addr.port)
    if (!node) throw new Error(`the sentinels' master ${addr.host}:${addr.port} is not a server of this lab`)
    await this.#killRedisNode(node)
    return { name: node.name, host: HOST, port: node.port }
  }

  /** Sentinel mode: the master address according to the first sentinel that answers. */
  async sentinelMaster(): Promise<RedisAddress> {
    const s = this.#state.sentinel
    if (!s) throw new Error('this lab has no sentinels (start it with sentinel: true)')
    let lastError: unknown
    for (const sentinel of s.sentinels) {
      try {
        const reply = await redisCommand(sentinel.port, ['SENTINEL', 'get-master-addr-by-name', s.masterName])
        if (Array.isArray(reply) && typeof reply[0] === 'string' && typeof reply[1] === 'string') {
          return { host: reply[0], port: Number(reply[1]) }
        }
        lastError = new Error(`unexpected reply ${JSON.stringify(reply)}`)
      } catch (err) {
        lastError = err
      }
    }
    throw new Error(`no sentinel answered: ${errorMessage(lastError)}`, { cause: lastError })
  }

  /**
   * Sentinel mode: resolves once a majority of sentinels name a master other than `not`
   * (default: the primary known before) and that server answers ROLE with 'master'.
   * Updates lab.redis.
   */
  async waitForRedisFailover(opts: { not?: number; timeoutMs?: number } = {}): Promise<RedisAddress> {
    this.#refresh()
    const s = this.#state.sentinel
    if (!s) throw new Error('this lab has no sentinels (start it with sentinel: true)')
    const oldPort = opts.not ?? this.redis.port
    const addr = await waitFor(
      `the sentinels to promote a new Redis master (not ${oldPort})`,
      async () => {
        const answers = await Promise.all(
          s.sentinels.map((x) =>
            redisCommand(x.port, ['SENTINEL', 'get-master-addr-by-name', s.masterName], {
              timeoutMs: 500,
            }).catch(() => null),
          ),
        )
        const ports = answers.flatMap((a) =>
          Array.isArray(a) && typeof a[1] === 'string' ? [Number(a[1])] : [],
        )
        const moved = ports.filter((p) => p !== oldPort)
        const candidate = moved[0]
        if (candidate === undefined || moved.filter((p) => p === candidate).length < s.quorum)
          return undefined
        const role = await redisCommand(candidate, ['ROLE'], { timeoutMs: 500 })
        return Array.isArray(role) && role[0] === 'master' ? { host: HOST, port: candidate } : undefined
      },
      { timeoutMs: opts.timeoutMs ?? this.#readyTimeoutMs, intervalMs: 100 },
    )
    const node = this.#state.redis.find((r) => r.port === addr.port)
    if (node) {
      this.#state.redisPrimary = node.name
      this.#save()
    }
    return addr
  }

  /**
   * Redis Cluster: fails one master over with `CLUSTER FAILOVER` on its replica (coordinated:
   * nothing acknowledged is lost). `nameOrSlotKey`: a node name (`'cluster0'`) or a key (the
   * master of its slot); default the first master. Resolves when the replica is master, the old
   * master replicates from it, and every node says `cluster_state:ok` and agrees on the masters.
   */
  async failoverRedisClusterMaster(
    nameOrSlotKey?: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<RedisClusterFailover> {
    return this.#redisCluster.failoverMaster(nameOrSlotKey, opts)
  }

  /**
   * Redis Cluster: kill -9 of one master (chosen as for failoverRedisClusterMaster()). Its
   * replica is promoted by the cluster after `cluster-node-timeout` (2 s); resolves once it is
   * master and every live node says `cluster_state:ok`. restartRedisNode(name) brings the killed
   * node back as a replica.
   */
  async killRedisClusterMaster(
    nameOrSlotKey?: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<RedisClusterFailover> {
    return this.#redisCluster.killMaster(nameOrSlotKey, opts)
  }

  /**
   * A failover that demotes the server clients are connected to (Memorystore standard tier,
   * ElastiCache): the replica is promoted (`REPLICAOF NO ONE`) and the old primary becomes its
   * replica (`REPLICAOF 127.0.0.1 <port>`). A client still connected to the old primary gets
   * `READONLY` on writes while its reads keep working; the fixed endpoint
   * (`lab.redisEndpoint`) sends new connections to the new primary. Nothing acknowledged is
   * lost: the old primary's writers are paused (`CLIENT PAUSE WRITE`) until the replica has
   * caught up, and the writes that waited get READONLY. `dropConnections: true` also closes
   * every connection made through the endpoint (a provider that drops them). Needs a replica
   * (`redisReplica: true`) and no sentinels (they would undo it). Updates `lab.redis`.
   */
  async demoteRedisPrimary(
    opts: { dropConnections?: boolean; timeoutMs?: number } = {},
  ): Promise<{ demoted: string; promoted: string; seconds: number }> {
    this.#refresh()
    const started = performance.now()
    const timeoutMs = opts.timeoutMs ?? this.#readyTimeoutMs
    if (this.#state.sentinel)
      throw new Error('demoteRedisPrimary() is for a lab without sentinels (they would fail it back)')
    const old = this.#requireRedisPrimary()
    const next = this.#state.redis.find((r) => r !== old && r.pid !== undefined && isProcessAlive(r.pid))
    if (!next)
      throw new Error('there is no running Redis replica to promote (start the lab with redisReplica: true)')
    const ok = async (port: number, args: string[]) => {
      const reply = await redisCommand(port, args, { timeoutMs: 2000 })
      if (reply instanceof RespError) throw new Error(`${args.join(' ')} on port ${port}: ${reply.message}`)
      return reply
    }
    // Hold the old primary's writers while the replica catches up (as a planned failover does).
    await ok(old.port, ['CLIENT', 'PAUSE', String(Math.max(10_000, timeoutMs)), 'WRITE'])
    try {
      await waitFor(
        `${next.name} to catch up with ${old.name}`,
        async () => {
          const master = parseInfo(String(await ok(old.port, ['INFO', 'replication'])))
          const replica = parseInfo(String(await ok(next.port, ['INFO', 'replication'])))
          return Number(replica.slave_repl_offset) >= Number(master.master_repl_offset) ? true : undefined
        },
        { timeoutMs, intervalMs: 20 },
      )
      await ok(next.port, ['REPLICAOF', 'NO', 'ONE'])
      // lab.json names the new primary: the endpoint's next connection goes there.
      this.#state.redisPrimary = next.name
      this.#save()
      await ok(old.port, ['REPLICAOF', HOST, String(next.port)])
    } finally {
      await ok(old.port, ['CLIENT', 'UNPAUSE']).catch(() => {})
    }
    if (opts.dropConnections && this.#state.redisEndpoint?.pid)
      signalPid(this.#state.redisEndpoint.pid, 'SIGUSR2', this.baseDir)
    await waitFor(
      `${old.name} to replicate from ${next.name}`,
      async () => {
        const info = parseInfo(String(await ok(old.port, ['INFO', 'replication'])))
        return info.role === 'slave' &&
          info.master_link_status === 'up' &&
          Number(info.master_port) === next.port
          ? true
          : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
    const seconds = Math.round((performance.now() - started) / 100) / 10
    this.#log(`redis: promoted ${next.name}, demoted ${old.name} to its replica (${seconds} s)`)
    return { demoted: old.name, promoted: next.name, seconds }
  }

  /** One Redis command to a server of the lab (the primary by default). */
  async redisCommand(args: string[], port = this.redis.port, timeoutMs = 1000): Promise<RespValue> {
    return redisCommand(port, args, { timeoutMs })
  }

  // ---------------------------------------------------------------- status & teardown

  /** A summary for humans and the CLI's status verb. */
  async status(): Promise<LabStatus> {
    this.#refresh()
    const frozen = this.#state.frozen?.members ?? []
    const out: LabStatus = {
      baseDir: this.baseDir,
      scope: this.#state.scope,
      members: [],
      redis: [],
      sentinels: [],
      ...(this.#state.frozen?.dcs ? { dcsFrozen: true } : {}),
    }
    if (this.#state.members.length > 0) {
      try {
        const cluster = await this.cluster()
        for (const m of this.#state.members) {
          const c = cluster.members.find((x) => x.name === m.name)
          out.members.push({
            name: m.name,
            port: m.port,
            apiUrl: apiUrl(m),
            pid: m.pid,
            role: c?.role ?? 'absent',
            state: c?.state ?? (m.pid && isProcessAlive(m.pid) ? 'starting' : 'stopped'),
            ...(c?.lag !== undefined ? { lag: c.lag } : {}),
            ...(c?.timeline !== undefined ? { timeline: c.timeline } : {}),
            ...(frozen.includes(m.name) ? { frozen: true } : {}),
          })
        }
      } catch (err) {
        out.patroniError = errorMessage(err)
        for (const m of this.#state.members) {
          out.members.push({
            name: m.name,
            port: m.port,
            apiUrl: apiUrl(m),
            pid: m.pid,
            role: 'unknown',
            state: m.pid && isProcessAlive(m.pid) ? 'unreachable' : 'stopped',
            ...(frozen.includes(m.name) ? { frozen: true } : {}),
          })
        }
      }
    }
    for (const r of this.#state.redis) {
      let role = 'down'
      let detail = ''
      try {
        const reply = await redisCommand(r.port, ['INFO', 'replication'], { timeoutMs: 500 })
        if (typeof reply === 'string') {
          const info = parseInfo(reply)
          role = info.role ?? 'unknown'
          if (role === 'slave') {
            role = 'replica'
            detail = `of ${info.master_host}:${info.master_port} link ${info.master_link_status}`
          } else {
            detail = `${info.connected_slaves ?? 0} replica(s)`
          }
        }
      } catch (err) {
        role = r.pid && isProcessAlive(r.pid) ? 'not answering' : 'down'
        detail = errorMessage(err)
      }
      out.redis.push({ name: r.name, port: r.port, pid: r.pid, role, detail })
    }
    if (this.#state.redisCluster) out.redisCluster = await this.#redisCluster.status()
    const endpoint = this.#state.redisEndpoint
    if (endpoint) {
      out.redisEndpoint = {
        port: endpoint.port,
        pid: endpoint.pid,
        target: this.#redisPrimaryNode()?.name ?? '-',
        ok: await redisCommand(endpoint.port, ['PING'], { timeoutMs: 500 })
          .then((r) => r === 'PONG')
          .catch(() => false),
      }
    }
    for (const s of this.#state.sentinel?.sentinels ?? []) {
      let master = ''
      let ok = false
      try {
        const reply = await redisCommand(
          s.port,
          ['SENTINEL', 'get-master-addr-by-name', this.#state.sentinel!.masterName],
          {
            timeoutMs: 500,
          },
        )
        if (Array.isArray(reply)) {
          master = `${String(reply[0])}:${String(reply[1])}`
          ok = true
        }
      } catch (err) {
        master = errorMessage(err)
      }
      out.sentinels.push({ name: s.name, port: s.port, pid: s.pid, ok, master })
    }
    return out
  }

  /**
   * Stops every process the lab started, by PID (process groups), and removes its folder and
   * port reservations. Idempotent.
   */
  async down(): Promise<void> {
    if (this.#down) return
    this.#refresh()
    this.#down = true
    const alive = await teardown(this.#state, this.#log)
    ownedLabs.delete(this)
    if (ownedLabs.size === 0) removeHooks()
    if (alive.length > 0) throw new Error(`lab down: PIDs still alive: ${alive.join(' ')}`)
    this.#log(`lab ${this.baseDir} is down`)
  }

  /** Synchronous kill -9 of everything (process exit hooks). Prefer down(). */
  killNow(): void {
    if (this.#down) return
    this.#refresh()
    this.#down = true
    killLabSync(this.#state)
    ownedLabs.delete(this)
  }

  // ---------------------------------------------------------------- internals (startLab uses these)

  /** @internal */
  async bootEtcd(): Promise<void> {
    const etcd = this.#state.etcd
    if (!etcd) return
    const pid = await spawnServer({
      cmd: 'etcd',
      args: etcdArgs({
        name: 'etcd0',
        dataDir: join(etcd.dir, 'data'),
        clientPort: etcd.clientPort,
        peerPort: etcd.peerPort,
        token: this.#state.scope,
      }),
      cwd: etcd.dir,
      logPath: etcd.logPath,
      runAs: this.#runAs,
    })
    etcd.pid = pid
    this.#recordPid(pid)
  }

  /** @internal */
  async waitForEtcd(timeoutMs: number): Promise<void> {
    const etcd = this.#state.etcd
    if (!etcd) return
    await waitFor(
      'etcd to be healthy',
      async () => {
        if (etcd.pid && !isProcessAlive(etcd.pid))
          throw fatal(`etcd exited; see ${etcd.logPath}\n${tail(etcd.logPath)}`)
        const res = await fetch(`http://${HOST}:${etcd.clientPort}/health`, {
          signal: AbortSignal.timeout(1000),
        })
        const body = (await res.json()) as { health?: string }
        return body.health === 'true' ? true : undefined
      },
      { timeoutMs, intervalMs: 100 },
    )
  }

  /** @internal */
  async bootPatroni(): Promise<void> {
    for (const member of this.#state.members) await this.#spawnPatroni(member)
  }

  /** @internal Waits for one leader and every other member streaming. */
  async waitForCluster(timeoutMs: number): Promise<void> {
    const n = this.#state.members.length
    if (n === 0) return
    const deadline = Date.now() + timeoutMs
    const check = () => {
      for (const m of this.#state.members) {
        if (m.pid && !isProcessAlive(m.pid))
          throw fatal(`patroni ${m.name} exited; see ${m.logPath}\n${tail(m.logPath)}`)
      }
    }
    await waitFor(
      'a Patroni leader',
      async () => {
        check()
        const leader = await this.primary().catch(() => undefined)
        return leader?.state === 'running' ? leader : undefined
      },
      { timeoutMs, intervalMs: 200 },
    )
    if (n > 1) {
      await waitFor(
        `${n - 1} streaming replica(s)`,
        async () => {
          check()
          return this.waitForReplicas(n - 1, { timeoutMs: 1 }).catch(() => undefined)
        },
        { timeoutMs: Math.max(1, deadline - Date.now()), intervalMs: 250 },
      )
    }
    if (this.#state.failsafeMode) {
      // Until the leader has written the /failsafe key with every member, losing etcd would
      // still demote it: failsafe mode only protects a leader that knows whom to ask.
      await waitFor(
        `the /failsafe key to list all ${n} member(s)`,
        async () => {
          const leader = await this.primary()
          if (!leader) return undefined
          const res = await fetch(`${leader.apiUrl}/failsafe`, { signal: AbortSignal.timeout(1000) })
          if (!res.ok) {
            await res.body?.cancel()
            return undefined
          }
          const members = (await res.json()) as Record<string, string>
          return Object.keys(members).length >= n ? true : undefined
        },
        { timeoutMs: Math.max(1, deadline - Date.now()), intervalMs: 200 },
      )
    }
  }

  /** @internal */
  async bootRedis(): Promise<void> {
    const [primary, ...replicas] = this.#state.redis
    if (!primary) return
    await this.#spawnRedis(primary)
    for (const r of replicas) await this.#spawnRedis(r, primary.port)
  }

  /** @internal */
  async waitForRedis(timeoutMs: number): Promise<void> {
    const [primary, ...replicas] = this.#state.redis
    if (!primary) return
    await this.#waitForPing(primary.port, timeoutMs)
    for (const r of replicas) {
      await waitFor(
        `${r.name} to replicate`,
        async () => {
          const reply = await redisCommand(r.port, ['INFO', 'replication'], { timeoutMs: 500 })
          return typeof reply === 'string' && parseInfo(reply).master_link_status === 'up' ? true : undefined
        },
        { timeoutMs, intervalMs: 100 },
      )
    }
  }

  /** @internal Starts the Redis Cluster's nodes. */
  async bootRedisCluster(): Promise<void> {
    await this.#redisCluster.boot()
  }

  /** @internal Forms the Redis Cluster and waits until it is ok everywhere. */
  async formRedisCluster(timeoutMs: number): Promise<void> {
    await this.#redisCluster.form(timeoutMs)
  }

  /** @internal Starts the fixed Redis endpoint and waits until a PING through it answers. */
  async bootRedisEndpoint(timeoutMs: number): Promise<void> {
    const e = this.#state.redisEndpoint
    if (!e) return
    writeFileSync(e.scriptPath, ENDPOINT_SOURCE, { mode: 0o644 })
    const pid = await spawnServer({
      cmd: process.execPath,
      args: [e.scriptPath, join(this.baseDir, 'lab.json'), String(e.port)],
      cwd: e.dir,
      logPath: e.logPath,
    })
    e.pid = pid
    this.#recordPid(pid)
    await waitFor(
      'the Redis endpoint to answer PING',
      async () => {
        if (!isProcessAlive(pid))
          throw fatal(`the Redis endpoint exited; see ${e.logPath}\n${tail(e.logPath)}`)
        return (await redisCommand(e.port, ['PING'], { timeoutMs: 500 })) === 'PONG' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
  }

  /** @internal */
  async bootSentinels(): Promise<void> {
    const s = this.#state.sentinel
    const primary = this.#state.redis[0]
    if (!s || !primary) return
    for (const sentinel of s.sentinels) {
      writeFileSync(
        sentinel.confPath,
        sentinelConf({
          port: sentinel.port,
          dir: sentinel.dir,
          masterPort: primary.port,
          quorum: s.quorum,
          name: s.masterName,
        }),
      )
      const pid = await spawnServer({
        cmd: 'redis-sentinel',
        args: [sentinel.confPath],
        cwd: sentinel.dir,
        logPath: sentinel.logPath,
      })
      sentinel.pid = pid
      this.#recordPid(pid)
    }
  }

  /** @internal Every sentinel knows the master, its replica and the other sentinels. */
  async waitForSentinels(timeoutMs: number): Promise<void> {
    const s = this.#state.sentinel
    if (!s) return
    const replicas = this.#state.redis.length - 1
    for (const sentinel of s.sentinels) {
      await waitFor(
        `sentinel ${sentinel.name} to see the master, ${replicas} replica(s) and ${s.sentinels.length - 1} other sentinel(s)`,
        async () => {
          const reply = await redisCommand(sentinel.port, ['SENTINEL', 'master', s.masterName], {
            timeoutMs: 500,
          })
          if (!Array.isArray(reply)) return undefined
          const info = pairs(reply)
          const ok =
            Number(info['num-slaves']) >= replicas &&
            Number(info['num-other-sentinels']) >= s.sentinels.length - 1 &&
            !String(info.flags).includes('down')
          return ok ? true : undefined
        },
        { timeoutMs, intervalMs: 200 },
      )
    }
  }

  /** @internal */
  startWatchdog(): void {
    // A file rather than `node -e`, so that ps shows a readable command line.
    const script = join(this.baseDir, 'watchdog.cjs')
    writeFileSync(script, WATCHDOG_SOURCE, { mode: 0o644 })
    const child = spawn(process.execPath, [script, String(process.pid), this.baseDir, defaultRegistryDir()], {
      cwd: this.baseDir,
      detached: true,
      stdio: 'ignore',
    })
    child.on('error', () => {})
    child.unref()
    if (child.pid) {
      this.#state.watchdogPid = child.pid
      this.#recordPid(child.pid)
    }
  }

  /** @internal */
  setBootSeconds(seconds: number): void {
    this.#state.bootSeconds = seconds
    this.#save()
  }

  /** @internal Writes lab.json. */
  save(): void {
    this.#save()
  }

  /**
   * Re-reads lab.json: another process may have changed the lab (a test worker that restarted
   * a member of a lab started in globalSetup, or a CLI chaos verb), and every Lab saves after
   * each change, so the file is the truth about PIDs and the Redis primary.
   */
  #refresh(): void {
    if (this.#down) return
    try {
      const disk = readState(this.baseDir)
      if (disk.baseDir === this.baseDir && disk.scope === this.#state.scope) this.#state = disk
    } catch {
      // no file (removed by down() elsewhere): keep what we know
    }
  }

  #save(): void {
    if (!existsSync(this.baseDir)) return
    writeState(this.#state)
  }

  #recordPid(pid: number): void {
    if (!this.#state.startedPids.includes(pid)) this.#state.startedPids.push(pid)
    this.#save()
  }

  #member(name: string): MemberState {
    const member = this.#state.members.find((m) => m.name === name)
    if (!member)
      throw new Error(
        `no such member: ${name} (members: ${this.#state.members.map((m) => m.name).join(', ')})`,
      )
    return member
  }

  #status(m: ClusterMember): LabMemberStatus {
    const own = this.#state.members.find((x) => x.name === m.name)
    return {
      name: m.name,
      host: m.host ?? HOST,
      port: m.port ?? own?.port ?? 0,
      apiUrl: own ? apiUrl(own) : m.api_url.replace(/\/patroni$/, ''),
      role: m.role,
      state: m.state,
      ...(m.lag !== undefined ? { lag: m.lag } : {}),
      ...(m.timeline !== undefined ? { timeline: m.timeline } : {}),
    }
  }

  async #spawnPatroni(member: MemberState): Promise<void> {
    const pid = await spawnServer({
      cmd: 'patroni',
      args: [member.configPath],
      cwd: member.dir,
      logPath: member.logPath,
      runAs: this.#runAs,
    })
    member.pid = pid
    this.#recordPid(pid)
  }

  #redisPrimaryNode(): RedisNodeState | undefined {
    const name = this.#state.redisPrimary
    return this.#state.redis.find((r) => r.name === name) ?? this.#state.redis[0]
  }

  #requireRedisPrimary(): RedisNodeState {
    const node = this.#redisPrimaryNode()
    if (!node) throw new Error('this lab has no Redis (start it with redis: true)')
    return node
  }

  async #spawnRedis(node: RedisNodeState, replicaOf?: number): Promise<void> {
    const pid = await spawnServer({
      cmd: 'redis-server',
      args: redisArgs({ port: node.port, dir: node.dir, ...(replicaOf !== undefined ? { replicaOf } : {}) }),
      cwd: node.dir,
      logPath: node.logPath,
    })
    node.pid = pid
    this.#recordPid(pid)
  }

  async #killRedisNode(node: RedisNodeState): Promise<void> {
    if (!node.pid) return
    signalTree(node.pid, 'SIGKILL', this.baseDir)
    // A stopped process does not die of SIGKILL until it is continued on some kernels' views: be sure.
    try {
      process.kill(node.pid, 'SIGCONT')
    } catch {
      // gone
    }
    const left = await waitForExit([node.pid], 5000)
    if (left.length > 0) throw new Error(`${node.name} (pid ${node.pid}) did not die`)
    await waitUntilRefused(`the killed ${node.name}`, [node.port])
    this.#log(`killed ${node.name} (pid ${node.pid})`)
    delete node.pid
    this.#save()
  }

  async #waitForPing(port: number, timeoutMs: number): Promise<void> {
    await waitFor(
      `Redis on port ${port} to answer PING`,
      async () => {
        const reply = await redisCommand(port, ['PING'], { timeoutMs: 500 })
        if (reply instanceof RespError) return undefined
        return reply === 'PONG' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
  }
}

export interface LabStatus {
  baseDir: string
  scope: string
  members: Array<{
    name: string
    port: number
    apiUrl: string
    pid: number | undefined
    role: string
    state: string
    lag?: number | 'unknown'
    timeline?: number
    /** Frozen by freezeMember() (SIGSTOP), not thawed yet. */
    frozen?: boolean
  }>
  patroniError?: string
  /** etcd frozen by freezeDcs(), not thawed yet. */
  dcsFrozen?: boolean
  redis: Array<{ name: string; port: number; pid: number | undefined; role: string; detail: string }>
  /** Redis Cluster nodes: role ('master', 'replica', 'down', 'not answering') and cluster_state. */
  redisCluster?: Array<{ name: string; port: number; pid: number | undefined; role: string; detail: string }>
  /** The fixed Redis endpoint and the server it sends new connections to. */
  redisEndpoint?: { port: number; pid: number | undefined; target: string; ok: boolean }
  sentinels: Array<{ name: string; port: number; pid: number | undefined; ok: boolean; master: string }>
}

function apiUrl(m: { apiPort: number }): string {
  return `http://${HOST}:${m.apiPort}`
}

function fileSize(path: string): number {
  try {
    return statSync(path).size
  } catch {
    return 0
  }
}

/** Lines PostgreSQL/Patroni log when a standby's timeline diverged from the leader's. */
const DIVERGENCE = [
  "is not in this server's history",
  'requested timeline',
  'could not receive data from WAL stream: ERROR:  requested starting point',
  'before current recovery point',
]

/** The first divergence line written to `path` after byte `offset`, or undefined. */
export function logShowsDivergence(path: string, offset: number): string | undefined {
  let text: string
  try {
    const size = statSync(path).size
    if (size <= offset) return undefined
    const fd = openSync(path, 'r')
    try {
      const length = Math.min(size - offset, 4 * 1024 * 1024)
      const buf = Buffer.alloc(length)
      readSync(fd, buf, 0, length, size - length)
      text = buf.toString('utf8')
    } finally {
      closeSync(fd)
    }
  } catch {
    return undefined
  }
  for (const line of text.split('\n')) {
    if (DIVERGENCE.some((d) => line.includes(d))) return line.trim().slice(0, 300)
  }
  return undefined
}

function fatal(message: string): Error {
  return Object.assign(new Error(message), { fatal: true })
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

function pairs(list: RespValue[]): Record<string, RespValue> {
  const out: Record<string, RespValue> = {}
  for (let i = 0; i + 1 < list.length; i += 2) out[String(list[i])] = list[i + 1] ?? null
  return out
}

/** Splits psql's unaligned output (fields \x1f, records \x1e) into rows. */
export function parsePsqlOutput(out: string): string[][] {
  const trimmed = out.replace(/\n$/, '')
  if (trimmed === '') return []
  return trimmed
    .split('\x1e')
    .filter((r, i, all) => !(i === all.length - 1 && r === ''))
    .map((r) => r.split('\x1f'))
}

/**
 * Starts a lab: etcd + N Patroni members (PostgreSQL 15) + Redis (+ replica and 3 sentinels),
 * all on 127.0.0.1 on free ports, in a folder of its own. Resolves when the cluster has one
 * running leader and N-1 streaming replicas, Redis answers, and the sentinels agree.
 */
export async function startLab(options: LabOptions = {}): Promise<Lab> {
  const started = performance.now()
  const nodes = options.nodes ?? 3
  const sentinel = options.sentinel ?? false
  const redisReplica = options.redisReplica ?? false
  const redis = (options.redis ?? true) || sentinel || redisReplica
  const redisCluster = options.redisCluster ?? false
  const synchronousMode = options.synchronousMode ?? false
  const failsafeMode = options.failsafeMode ?? false
  const readyTimeoutMs = options.readyTimeoutMs ?? 90_000
  const log = options.log ?? (() => {})
  if (!Number.isInteger(nodes) || nodes < 0 || nodes > 9)
    throw new Error(`nodes must be an integer 0..9, got ${nodes}`)
  if (nodes === 0 && !redis && !redisCluster)
    throw new Error('nothing to start: nodes is 0, redis and redisCluster are false')

  ensurePackages(requirements({ nodes, redis, sentinel, redisCluster }), log)
  const runAs = nodes > 0 ? postgresUser() : undefined

  let baseDir: string
  if (options.baseDir) {
    baseDir = resolve(options.baseDir)
    if (existsSync(join(baseDir, 'lab.json'))) {
      throw new Error(`${baseDir} already holds a lab (lab.json); stop it first or pick another folder`)
    }
    // down() removes the whole folder: never adopt one that holds anything.
    if (existsSync(baseDir) && readdirSync(baseDir).length > 0) {
      throw new Error(`${baseDir} is not empty; the lab needs a folder of its own (down() removes it)`)
    }
    mkdirSync(baseDir, { recursive: true, mode: 0o755 })
  } else {
    baseDir = mkdtempSync(join(tmpdir(), 'resilient-lab-'))
  }
  baseDir = realpathSync(baseDir)
  const own = (path: string) => {
    if (runAs) chownSync(path, runAs.uid, runAs.gid)
  }
  const mkdir = (path: string, forPostgres: boolean) => {
    mkdirSync(path, { recursive: true, mode: 0o700 })
    if (forPostgres) own(path)
    return path
  }
  if (nodes > 0) {
    try {
      checkReachable(baseDir, runAs)
    } catch (err) {
      rmSync(baseDir, { recursive: true, force: true })
      throw err
    }
    own(baseDir)
  }

  const ports = new PortAllocator(baseDir)
  const password = randomPassword(randomBytes(24))
  const state: LabState = {
    version: STATE_VERSION,
    baseDir,
    scope: scopeFor(baseDir),
    createdAt: new Date().toISOString(),
    ...(options.persistent ? {} : { ownerPid: process.pid }),
    synchronousMode,
    ...(failsafeMode ? { failsafeMode } : {}),
    postgres: {
      user: 'postgres',
      password,
      database: 'postgres',
      replicationUser: 'replicator',
      replicationPassword: randomPassword(randomBytes(24)),
    },
    members: [],
    redis: [],
    startedPids: [],
    ports: ports.reserved,
  }

  try {
    if (nodes > 0) {
      const dir = mkdir(join(baseDir, 'etcd'), true)
      const [clientPort, peerPort] = await ports.many(2)
      state.etcd = { clientPort: clientPort!, peerPort: peerPort!, dir, logPath: join(dir, 'etcd.log') }
    }
    for (let i = 0; i < nodes; i++) {
      const name = `pg${i}`
      const dir = mkdir(join(baseDir, name), true)
      checkSocketDir(dir)
      const [port, apiPort] = await ports.many(2)
      const member: MemberState = {
        name,
        port: port!,
        apiPort: apiPort!,
        dir,
        dataDir: join(dir, 'data'),
        configPath: join(dir, 'patroni.yml'),
        logPath: join(dir, 'patroni.log'),
      }
      const config = patroniConfig({
        scope: state.scope,
        name,
        port: member.port,
        apiPort: member.apiPort,
        etcdClientPort: state.etcd!.clientPort,
        dataDir: member.dataDir,
        socketDir: dir,
        pgpassPath: join(dir, 'pgpass'),
        superuser: { username: state.postgres.user, password: state.postgres.password },
        replication: {
          username: state.postgres.replicationUser,
          password: state.postgres.replicationPassword,
        },
        synchronousMode,
        failsafeMode,
      })
      writeFileSync(member.configPath, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 })
      own(member.configPath)
      state.members.push(member)
    }
    if (redis) {
      const count = sentinel || redisReplica ? 2 : 1
      for (let i = 0; i < count; i++) {
        const name = `redis${i}`
        const dir = mkdir(join(baseDir, name), false)
        state.redis.push({
          name,
          port: await ports.next(),
          dir,
          logPath: join(dir, 'redis.log'),
          startedAsReplica: i > 0,
        })
      }
      state.redisPrimary = 'redis0'
    }
    if (redisReplica) {
      const dir = mkdir(join(baseDir, 'redis-endpoint'), false)
      state.redisEndpoint = {
        port: await ports.next(),
        dir,
        logPath: join(dir, 'endpoint.log'),
        scriptPath: join(dir, 'endpoint.cjs'),
      }
    }
    if (redisCluster) state.redisCluster = await RedisClusterPart.plan(baseDir, ports, (d) => mkdir(d, false))
    if (sentinel) {
      const sentinels = []
      for (let i = 0; i < 3; i++) {
        const name = `sentinel${i}`
        const dir = mkdir(join(baseDir, name), false)
        sentinels.push({
          name,
          port: await ports.next(),
          dir,
          confPath: join(dir, 'sentinel.conf'),
          logPath: join(dir, 'sentinel.log'),
        })
      }
      state.sentinel = { masterName: SENTINEL_MASTER_NAME, quorum: 2, sentinels }
    }
  } catch (err) {
    ports.release()
    throw err
  }

  writeState(state)
  const lab = new Lab(state, { log, readyTimeoutMs, owned: !options.persistent })
  try {
    if (!options.persistent) lab.startWatchdog()
    log(`lab folder ${baseDir} (scope ${state.scope})`)
    const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)} s`
    const remaining = () => Math.max(1000, readyTimeoutMs - (performance.now() - started))
    await lab.bootEtcd()
    await lab.bootRedis()
    await lab.bootRedisCluster()
    if (nodes > 0) {
      await lab.waitForEtcd(remaining())
      log(`etcd ready (${elapsed()})`)
      await lab.bootPatroni()
    }
    if (redis) {
      await lab.waitForRedis(remaining())
      log(`redis ready (${elapsed()})`)
    }
    if (redisReplica) {
      await lab.bootRedisEndpoint(remaining())
      log(`redis endpoint ready (${elapsed()})`)
    }
    if (redisCluster) {
      await lab.formRedisCluster(remaining())
      log(`redis cluster ok (${elapsed()})`)
    }
    await lab.bootSentinels()
    if (nodes > 0) {
      await lab.waitForCluster(remaining())
      log(`patroni: 1 leader, ${nodes - 1} streaming replica(s) (${elapsed()})`)
    }
    if (sentinel) {
      await lab.waitForSentinels(remaining())
      log(`sentinels ready (${elapsed()})`)
    }
    const seconds = Math.round((performance.now() - started) / 100) / 10
    lab.setBootSeconds(seconds)
    log(`lab ready in ${seconds} s`)
    return lab
  } catch (err) {
    log(`lab failed to start: ${errorMessage(err)}`)
    await lab.down().catch(() => {})
    throw err
  }
}
