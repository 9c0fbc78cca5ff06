/**
 * The Postgres cluster of a lab: etcd (the DCS) and the Patroni members (PostgreSQL 15), their
 * waits (a leader, streaming replicas, a settled sync standby), their chaos verbs (kill, stop,
 * start and rejoin, switchover, replay pause, freeze, DCS freeze, read-only) and SQL through psql.
 */
import { execFile } from 'node:child_process'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  connectionString as buildConnectionString,
  checkSocketDir,
  etcdArgs,
  HOST,
  PG_BIN_DIR,
  patroniConfig,
} from './config.js'
import type { LabContext } from './context.js'
import type { PortAllocator } from './ports.js'
import { postgresUser, type RunAs, serverPids, spawnServer } from './procs.js'
import type { LabState, MemberState } from './state.js'
import {
  descendants,
  errorMessage,
  fatal,
  isProcessAlive,
  readPostmasterPid,
  signalPid,
  signalTree,
  tail,
  waitFor,
  waitForExit,
  waitUntilRefused,
} from './util.js'

/** The Postgres cluster's own configuration (startLab's options for it). */
export interface PostgresClusterConfig {
  /** Patroni members; 0 starts no PostgreSQL and no etcd. */
  nodes: number
  /** Patroni `synchronous_mode`. */
  synchronousMode: boolean
  /** Patroni `failsafe_mode`. */
  failsafeMode: boolean
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

/** One member in status(). */
export interface MemberStatusLine {
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
}

export const REPLICA_ROLES = new Set(['replica', 'sync_standby', 'quorum_standby'])
export const RUNNING_STATES = new Set(['running', 'streaming'])

export class PostgresCluster {
  readonly #ctx: LabContext
  readonly #runAs: RunAs | undefined
  #lastLeader: string | undefined
  #lastEndpoint = 0
  /** Log sizes of the members at the last stopMember()/freezeMember(): where rejoinReplicas() reads from. */
  readonly #logMarks = new Map<string, number>()

  constructor(ctx: LabContext) {
    this.#ctx = ctx
    // Only etcd and Patroni need the postgres user; a Redis-only lab runs without it.
    this.#runAs = ctx.state.members.length > 0 ? postgresUser() : undefined
  }

  /**
   * Adds etcd and the members to a state being planned: folders (handed to the postgres user
   * when running as root), two ports each, and each member's patroni.yml.
   */
  static async plan(
    state: LabState,
    ports: PortAllocator,
    mkdir: (path: string) => string,
    own: (path: string) => void,
    config: PostgresClusterConfig,
  ): Promise<void> {
    if (config.nodes === 0) return
    const dir = mkdir(join(state.baseDir, 'etcd'))
    const [clientPort, peerPort] = await ports.many(2)
    state.etcd = { clientPort: clientPort!, peerPort: peerPort!, dir, logPath: join(dir, 'etcd.log') }
    for (let i = 0; i < config.nodes; i++) {
      const name = `pg${i}`
      const dir = mkdir(join(state.baseDir, name))
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
      const patroni = patroniConfig({
        scope: state.scope,
        name,
        port: member.port,
        apiPort: member.apiPort,
        etcdClientPort: clientPort!,
        dataDir: member.dataDir,
        socketDir: dir,
        pgpassPath: join(dir, 'pgpass'),
        superuser: { username: state.postgres.user, password: state.postgres.password },
        replication: {
          username: state.postgres.replicationUser,
          password: state.postgres.replicationPassword,
        },
        synchronousMode: config.synchronousMode,
        failsafeMode: config.failsafeMode,
      })
      writeFileSync(member.configPath, `${JSON.stringify(patroni, null, 2)}\n`, { mode: 0o600 })
      own(member.configPath)
      state.members.push(member)
    }
  }

  get patroni(): { endpoints: string[]; scope: string } {
    return { endpoints: this.#ctx.state.members.map((m) => apiUrl(m)), scope: this.#ctx.state.scope }
  }

  get members(): LabMember[] {
    return this.#ctx.state.members.map((m) => ({ name: m.name, host: HOST, port: m.port, apiUrl: apiUrl(m) }))
  }

  /** Credentials a client uses (password auth, scram-sha-256, on 127.0.0.1). */
  get postgres(): { user: string; password: string; database: string } {
    const p = this.#ctx.state.postgres
    return { user: p.user, password: p.password, database: p.database }
  }

  /**
   * postgres://user:password@127.0.0.1:port/postgres for a member; without a name, for the
   * leader as last observed by this lab (startLab, cluster(), primary(), waitForPrimary(), ...).
   */
  connectionString(memberName?: string): string {
    const name = memberName ?? this.#lastLeader ?? this.#ctx.state.members[0]?.name
    const member = this.#ctx.state.members.find((m) => m.name === name)
    if (!member) throw new Error(`no such member: ${String(name)}`)
    return buildConnectionString(this.postgres, HOST, member.port)
  }

  /** PIDs of the postmasters running now (started by Patroni, not by the lab). */
  postmasterPids(): number[] {
    this.#ctx.refresh()
    return serverPids(this.#ctx.state).postmasters
  }

  /** GET /cluster from the first member that answers. */
  async cluster(): Promise<ClusterInfo> {
    const members = this.#ctx.state.members
    if (members.length === 0) throw new Error('this lab has no Patroni members (nodes: 0)')
    let lastError: unknown
    // From the member that answered last; frozen members last (they accept and never answer).
    const frozen = this.#ctx.state.frozen?.members ?? []
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
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
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
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
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
    this.member(name)
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
      { timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs, intervalMs: 200 },
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
    this.#ctx.refresh()
    if (this.#ctx.state.synchronousMode && opts.waitForSync !== false) {
      const sync = await this.waitForSyncStandby({ timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs })
      this.#ctx.log(`sync standby ${sync.name} settled: killing the leader`)
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
      { timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs, intervalMs: 250 },
    )
  }

  /**
   * Stops a member. Default: kill -9 of its Patroni and its postmaster (a crash; PostgreSQL's
   * shared memory is freed when it starts again). `graceful: true`: SIGTERM to Patroni, which
   * stops PostgreSQL (fast mode) and hands the leader key over if it held it.
   */
  async stopMember(name: string, opts: { graceful?: boolean; timeoutMs?: number } = {}): Promise<void> {
    this.#ctx.refresh()
    const member = this.member(name)
    // A stopped process acts on no signal but SIGKILL: Lab.stopMember() thaws it first.
    if (opts.graceful && this.#ctx.state.frozen?.members.includes(name))
      throw new Error(`member ${name} is frozen: thaw it before a graceful stop`)
    this.markLogs(name)
    const pm = readPostmasterPid(member.dataDir)
    const postmaster = pm && isProcessAlive(pm.pid) ? pm.pid : undefined
    // Listed before the kill: a frozen postmaster's children would stay stopped as orphans.
    const children = postmaster ? descendants(postmaster) : []
    if (opts.graceful) {
      if (member.pid) signalTree(member.pid, 'SIGTERM', this.#ctx.baseDir)
      const left = await waitForExit(
        [...(member.pid ? [member.pid] : []), ...(postmaster ? [postmaster] : [])],
        opts.timeoutMs ?? 60_000,
      )
      if (left.length > 0)
        throw new Error(`member ${name} did not stop within the timeout (pids ${left.join(' ')})`)
    } else {
      if (member.pid) signalTree(member.pid, 'SIGKILL', this.#ctx.baseDir)
      if (postmaster) signalTree(postmaster, 'SIGKILL', this.#ctx.baseDir)
      for (const pid of children) signalPid(pid, 'SIGKILL', this.#ctx.baseDir)
      const left = await waitForExit(
        [...(member.pid ? [member.pid] : []), ...(postmaster ? [postmaster] : []), ...children],
        opts.timeoutMs ?? 10_000,
      )
      if (left.length > 0) throw new Error(`member ${name} did not die (pids ${left.join(' ')})`)
    }
    await waitUntilRefused(`the stopped ${name}`, [member.apiPort, member.port])
    this.#ctx.log(`stopped ${name}${opts.graceful ? ' (graceful)' : ' (kill -9)'}`)
    delete member.pid
    if (this.#ctx.state.frozen)
      this.#ctx.state.frozen.members = this.#ctx.state.frozen.members.filter((m) => m !== name)
    this.#ctx.save()
  }

  /**
   * Planned switchover through Patroni's REST API (POST /switchover on the leader). Resolves
   * with the new leader once it is running (the candidate, when one is given).
   */
  async switchover(opts: { candidate?: string; timeoutMs?: number } = {}): Promise<LabMemberStatus> {
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
    const leader = await this.primary()
    if (!leader) throw new Error('there is no leader to switch over from')
    if (opts.candidate) this.member(opts.candidate)
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
    const member = this.member(name)
    const p = this.#ctx.state.postgres
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

  async bootEtcd(): Promise<void> {
    const etcd = this.#ctx.state.etcd
    if (!etcd) return
    const pid = await spawnServer({
      cmd: 'etcd',
      args: etcdArgs({
        name: 'etcd0',
        dataDir: join(etcd.dir, 'data'),
        clientPort: etcd.clientPort,
        peerPort: etcd.peerPort,
        token: this.#ctx.state.scope,
      }),
      cwd: etcd.dir,
      logPath: etcd.logPath,
      runAs: this.#runAs,
    })
    etcd.pid = pid
    this.#ctx.recordPid(pid)
  }

  async waitForEtcd(timeoutMs: number): Promise<void> {
    const etcd = this.#ctx.state.etcd
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

  async bootPatroni(): Promise<void> {
    for (const member of this.#ctx.state.members) await this.spawnPatroni(member)
  }

  /** Waits for one leader and every other member streaming. */
  async waitForCluster(timeoutMs: number): Promise<void> {
    const n = this.#ctx.state.members.length
    if (n === 0) return
    const deadline = Date.now() + timeoutMs
    const check = () => {
      for (const m of this.#ctx.state.members) {
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
    if (this.#ctx.state.failsafeMode) {
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

  /** Remembers every member's log size (but `except`'s): rejoinReplicas() reads from there. */
  markLogs(except?: string): void {
    for (const m of this.#ctx.state.members)
      if (m.name !== except) this.#logMarks.set(m.name, fileSize(m.logPath))
  }

  /** The log size remembered by markLogs(), if any. */
  logMark(name: string): number | undefined {
    return this.#logMarks.get(name)
  }

  /** The member named `name` in the current state; throws naming the members when there is none. */
  member(name: string): MemberState {
    const member = this.#ctx.state.members.find((m) => m.name === name)
    if (!member)
      throw new Error(
        `no such member: ${name} (members: ${this.#ctx.state.members.map((m) => m.name).join(', ')})`,
      )
    return member
  }

  #status(m: ClusterMember): LabMemberStatus {
    const own = this.#ctx.state.members.find((x) => x.name === m.name)
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

  async spawnPatroni(member: MemberState): Promise<void> {
    const pid = await spawnServer({
      cmd: 'patroni',
      args: [member.configPath],
      cwd: member.dir,
      logPath: member.logPath,
      runAs: this.#runAs,
    })
    member.pid = pid
    this.#ctx.recordPid(pid)
  }

  /** Each member with what /cluster says about it (or why it cannot be asked). */
  async status(): Promise<{ members: MemberStatusLine[]; patroniError?: string; dcsFrozen?: boolean }> {
    const state = this.#ctx.state
    const frozen = state.frozen?.members ?? []
    const members: MemberStatusLine[] = []
    const out = { members, ...(state.frozen?.dcs ? { dcsFrozen: true } : {}) }
    if (state.members.length === 0) return out
    try {
      const cluster = await this.cluster()
      for (const m of state.members) {
        const c = cluster.members.find((x) => x.name === m.name)
        members.push({
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
      return out
    } catch (err) {
      for (const m of state.members) {
        members.push({
          name: m.name,
          port: m.port,
          apiUrl: apiUrl(m),
          pid: m.pid,
          role: 'unknown',
          state: m.pid && isProcessAlive(m.pid) ? 'unreachable' : 'stopped',
          ...(frozen.includes(m.name) ? { frozen: true } : {}),
        })
      }
      return { ...out, patroniError: errorMessage(err) }
    }
  }
}

export function apiUrl(m: { apiPort: number }): string {
  return `http://${HOST}:${m.apiPort}`
}

export function fileSize(path: string): number {
  try {
    return statSync(path).size
  } catch {
    return 0
  }
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
