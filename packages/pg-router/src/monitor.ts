import {
  Emitter,
  metrics,
  publish,
  ResilientError,
  SingleFlight,
  toError,
  withTimeout,
} from '@resilient/core'
import { channels } from './channels.js'
import { type Classification, classifyError, isRoleMismatch } from './classify.js'
import type { DiscoveredMember, Discovery, DiscoveryResult } from './discovery/types.js'
import { type FailoverEvent, WriterGate } from './failover.js'
import { abandonUnresponsive, Liveness } from './liveness.js'
import { MemberPool } from './member-pool.js'
import type { ResolvedOptions } from './options.js'
import {
  historyOf,
  parseHistoryFile,
  type TimelineInfo,
  type TimelineRegressionEvent,
  type TimelineSwitch,
  TimelineWatch,
} from './timeline.js'
import {
  eligibleReplicas,
  type Member,
  parseLsn,
  parseTimeline,
  type Topology,
  timelineOfWalFile,
  viewOf,
} from './topology.js'

/**
 * The writer's position: the insert pointer (what a session token holds), its timeline (in the
 * WAL file's name), and whether it is in recovery (demoted under us).
 */
const WRITER_POLL_SQL =
  'SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn, ' +
  'CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END AS f, ' +
  'pg_is_in_recovery() AS r'

/** A replica's replay position, and the timeline its WAL receiver streams (null without pg_read_all_stats). */
const REPLICA_POLL_SQL =
  'SELECT pg_last_wal_replay_lsn()::text AS lsn, (SELECT received_tli FROM pg_stat_wal_receiver) AS tl'

/** How often the history of the primary's timeline is asked for again while it is unknown. */
const HISTORY_RETRY_MS = 5_000

function noop(): void {}

/** Forget what was measured of `m`'s WAL position (role, timeline or pool generation changed). */
function resetLsn(m: Member): void {
  m.lsn = null
  m.lsnTimeline = null
  m.measuredLagBytes = null
  m.lsnEpoch++
}

/**
 * One per router. Polls discovery steadily (intervalMs, jittered) and fast (fastIntervalMs)
 * while no writer is confirmed; confirms a discovered primary with SQL on a fresh
 * connection before writes may use it; polls replay positions of the replicas so reads can
 * skip lagging ones (and sessions can read their writes) without a round trip per read.
 */
export class Monitor {
  readonly members = new Map<string, Member>()
  readonly gate: WriterGate
  readonly topologyChanges = new Emitter<Topology>()
  readonly failovers = new Emitter<FailoverEvent>()
  readonly timelineRegressions = new Emitter<TimelineRegressionEvent>()
  /** Which timelines this router wrote on; regressions detected and not acknowledged. */
  readonly timelines = new TimelineWatch()
  discoveryFailures = 0
  consecutiveDiscoveryFailures = 0
  lastDiscoveryAt: number | null = null
  lastDiscoverySource: string | null = null
  lastDiscoveryError: Error | null = null
  conflict: string[] | null = null
  /** Why the last attempt to confirm a discovered primary failed (ready() reports it). */
  lastConfirmError: Error | null = null
  #opts: ResolvedOptions
  #discovery: Discovery
  #onIdleError: (pool: MemberPool, err: Error, generation: number) => void
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | null = null
  #again = false
  #closed = false
  #candidateInRecovery = false
  #lastSignature = ''
  /** Discovery is not asked again before this performance.now() while no writer is confirmed. */
  #nextDiscoveryAt = 0
  // The writer's position and the replicas' are polled in separate flights: session reads
  // poll the replicas often, and must not keep the writer's position from being refreshed.
  #writerFlight = new SingleFlight<'writer', void>()
  #replicaFlight = new SingleFlight<'replicas', void>()
  /** The confirmed primary's timeline, as last measured (kept while none is confirmed). */
  #primaryTimeline: number | null = null
  #systemId: string | null = null
  #systemIdOf: Member | null = null
  /** The switch points of the primary timeline's ancestors, once known. */
  #history: { timeline: number; switches: readonly TimelineSwitch[] } | null = null
  #historyAskedAt = Number.NEGATIVE_INFINITY
  #historyFlight = new SingleFlight<'history', void>()
  #abort = new AbortController()
  /** Probes of every member on connections of the monitor's own (liveness.ts). */
  readonly #liveness: Liveness

  constructor(opts: ResolvedOptions, discovery: Discovery) {
    this.#opts = opts
    this.#discovery = discovery
    this.gate = new WriterGate(opts.failover.maxQueue, (e) => {
      publish(channels.failover, e)
      this.failovers.emit(e)
    })
    this.#onIdleError = (pool, err, generation) => {
      const member = this.members.get(pool.name)
      const c = classifyError(err, { phase: 'query', sent: false, connectionLost: true })
      publish(channels.poolError, { member: pool.name, sqlState: c.sqlState, errorCode: c.errorCode })
      if (member && member.pool === pool) this.reportFailure(member, generation, c)
    }
    this.#liveness = new Liveness(
      {
        connection: opts.connection,
        intervalMs: opts.monitor.livenessIntervalMs,
        probeTimeoutMs: opts.monitor.probeTimeoutMs,
        keepAliveInitialDelayMs: opts.pool.keepAliveInitialDelayMs,
      },
      { unresponsive: (m) => this.#unresponsive(m), alive: (m) => this.#alive(m) },
    )
  }

  /**
   * Liveness: `m` stopped answering. The writer is suspected as if killed; any other member
   * gets no reads until it answers again; what is in flight on it is abandoned now.
   */
  #unresponsive(m: Member): void {
    if (this.#closed) return
    if (this.gate.writer === m) this.suspect('unresponsive')
    else if (m.downUntil !== Number.POSITIVE_INFINITY) {
      m.downUntil = Number.POSITIVE_INFINITY
      publish(channels.replicaExcluded, { member: m.name, reason: 'unresponsive' })
    }
    abandonUnresponsive(m, this.#opts.monitor.probeTimeoutMs)
    this.nudge()
  }

  /** Liveness: `m` answers again (a thawed writer is confirmed by SQL like any other). */
  #alive(m: Member): void {
    if (this.#closed) return
    if (m.downUntil === Number.POSITIVE_INFINITY) m.downUntil = 0
    this.nudge()
  }

  start(): void {
    this.nudge()
  }

  /** Look again now (a failover is suspected). */
  nudge(): void {
    if (this.#closed) return
    if (this.#running) {
      this.#again = true
      return
    }
    clearTimeout(this.#timer)
    this.#running = this.#tick()
      .catch((err: unknown) => {
        // a bug, not a server problem: keep polling, say so
        publish(channels.discoveryError, { source: 'monitor', error: toError(err) })
      })
      .finally(() => {
        this.#running = null
        this.#schedule()
      })
  }

  /**
   * The data path saw `c` from `member` on a connection of pool generation `generation`.
   * A failover signal from the writer's current generation stops writes and drains its pool;
   * from a replica it takes the replica out of the read rotation until a probe succeeds.
   */
  reportFailure(member: Member, generation: number, c: Classification): void {
    if (!c.failoverSignal || this.#closed) return
    const reason = c.sqlState ?? c.errorCode ?? c.class
    if (this.gate.writer === member) {
      if (generation !== member.pool.generation) return // an old, already drained connection
      this.suspect(reason)
      return
    }
    if (member.role === 'primary') {
      // not confirmed yet (writes are held): make the monitor look again soon
      this.nudge()
      return
    }
    const until = performance.now() + this.#opts.monitor.intervalMs
    if (member.downUntil < until) {
      member.downUntil = until
      publish(channels.replicaExcluded, { member: member.name, reason })
    }
  }

  /** Stop writes to the writer, drain its pool, and poll fast until a primary is confirmed. */
  suspect(reason: string): void {
    const writer = this.gate.writer
    if (!writer) return
    if (this.gate.suspect(reason)) {
      publish(channels.suspect, { member: writer.name, reason })
      writer.pool.drain()
      this.timelines.sample(writer, writer.lsnTimeline) // its writes so far, on its timeline
      resetLsn(writer) // a new pool generation: whatever it says next is measured afresh
      this.nudge()
    }
  }

  #schedule(): void {
    if (this.#closed) return
    if (this.#again) {
      this.#again = false
      this.nudge()
      return
    }
    const o = this.#opts.monitor
    if (this.gate.writer) {
      this.#arm(() => this.nudge(), o.intervalMs * (0.9 + Math.random() * 0.2))
      return
    }
    // No writer: discovery every fastIntervalMs. A leader that discovery names but that still
    // says pg_is_in_recovery() = true is re-checked by SQL alone every confirmRetryMs in
    // between: a promotion must not multiply the requests sent to Patroni.
    const untilDiscovery = this.#nextDiscoveryAt - performance.now()
    if (this.#candidateInRecovery && untilDiscovery > o.confirmRetryMs) {
      this.#arm(() => this.#recheck(), o.confirmRetryMs)
    } else {
      this.#arm(() => this.nudge(), Math.max(0, untilDiscovery))
    }
  }

  #arm(fn: () => void, delay: number): void {
    this.#timer = setTimeout(fn, delay)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    const steady = this.gate.writer !== null
    await this.#discover()
    if (this.#closed) return
    await this.#decideWriter()
    this.#nextDiscoveryAt = performance.now() + this.#opts.monitor.fastIntervalMs
    if (this.#closed) return
    // Steady: the periodic poll. Just confirmed: learn the new writer's position and timeline now.
    if (steady || this.gate.writer !== null || this.lastDiscoveryAt === null) await this.refreshLsns(true)
    this.#emitTopologyIfChanged()
  }

  /** The SQL re-check of a discovered leader still in recovery, without asking discovery again. */
  #recheck(): void {
    if (this.#closed || this.#running) return
    this.#running = this.#decideWriter()
      .then(async () => {
        if (this.#closed || this.gate.writer === null) return
        await this.refreshLsns(true)
        this.#emitTopologyIfChanged()
      })
      .catch((err: unknown) => {
        publish(channels.discoveryError, { source: 'monitor', error: toError(err) })
      })
      .finally(() => {
        this.#running = null
        this.#schedule()
      })
  }

  async #discover(): Promise<void> {
    const budget = this.#opts.monitor.probeTimeoutMs * 5
    let result: DiscoveryResult
    try {
      result = await withTimeout((signal) => this.#discovery.discover(signal), budget, {
        signal: this.#abort.signal,
        operation: 'discovery',
      })
    } catch (err) {
      if (this.#closed) return
      this.discoveryFailures++
      this.consecutiveDiscoveryFailures++
      this.lastDiscoveryError = toError(err)
      publish(channels.discoveryError, { source: 'all', error: this.lastDiscoveryError })
      return
    }
    if (this.#closed) return
    this.consecutiveDiscoveryFailures = 0
    this.lastDiscoveryError = null
    this.lastDiscoveryAt = Date.now()
    this.lastDiscoverySource = result.source
    this.#apply(result)
  }

  #apply(result: DiscoveryResult): void {
    const seen = new Set<string>()
    for (const d of result.members) {
      seen.add(d.name)
      let m = this.members.get(d.name)
      if (m && (m.host !== d.host || m.port !== d.port)) {
        // moved: its old connections point elsewhere
        if (this.gate.writer === m) this.suspect('discovery')
        m.unobserve()
        void m.pool.close(0)
        m = undefined
      }
      if (!m) {
        m = this.#newMember(d)
        this.members.set(d.name, m)
      }
      // A new role or timeline: the WAL position we measured belongs to the member's past
      // (a killed primary back as a replica looks "ahead" without the new primary's writes).
      if (m.role !== d.role || m.timeline !== d.timeline) resetLsn(m)
      m.role = d.role
      m.state = d.state
      m.timeline = d.timeline
      m.sync = d.sync
      m.reportedLagBytes = d.lagBytes
      m.noLoadBalance = d.noLoadBalance === true
    }
    for (const [name, m] of this.members) {
      if (seen.has(name)) continue
      if (this.gate.writer === m) this.suspect('discovery')
      this.members.delete(name)
      m.unobserve()
      void m.pool.close(5_000)
    }
    this.conflict = result.conflict && result.conflict.length > 1 ? [...result.conflict] : null
    this.#liveness.sync(this.members.values())
    this.#updateTimelines()
  }

  #newMember(d: DiscoveredMember): Member {
    const o = this.#opts
    const pool = new MemberPool({
      name: d.name,
      host: d.host,
      port: d.port,
      connection: o.connection,
      max: o.pool.max,
      idleTimeoutMs: o.pool.idleTimeoutMs,
      connectTimeoutMs: o.pool.connectTimeoutMs,
      probeTimeoutMs: o.monitor.probeTimeoutMs,
      keepAliveInitialDelayMs: o.pool.keepAliveInitialDelayMs,
      onIdleError: this.#onIdleError,
    })
    const observed = metrics.observePool(`pg-router:${d.name}`, () => {
      const st = pool.stats()
      return { idle: st.idle, used: st.total - st.idle, pending: st.waiting, max: o.pool.max }
    })
    return {
      unobserve: () => observed.dispose(),
      name: d.name,
      host: d.host,
      port: d.port,
      role: d.role,
      state: d.state,
      timeline: d.timeline,
      sync: d.sync,
      reportedLagBytes: d.lagBytes,
      lsn: null,
      lsnTimeline: null,
      lsnEpoch: 0,
      measuredLagBytes: null,
      downUntil: 0,
      writes: 0,
      noLoadBalance: d.noLoadBalance === true,
      offTimeline: false,
      pool,
    }
  }

  /** The member discovery names as primary, unless several claim it (split brain). */
  discoveredPrimary(): Member | null {
    if (this.conflict) return null
    let found: Member | null = null
    for (const m of this.members.values()) {
      if (m.role !== 'primary') continue
      if (found) return null
      found = m
    }
    return found
  }

  async #decideWriter(): Promise<void> {
    const candidate = this.discoveredPrimary()
    const writer = this.gate.writer
    if (writer) {
      // Discovery answered and names someone else (or no one): the primary moved.
      if (this.consecutiveDiscoveryFailures === 0 && candidate !== writer) this.suspect('discovery')
      else return
    }
    this.#candidateInRecovery = false
    if (!candidate) return
    this.gate.noteDiscovered(candidate.name)
    // It does not answer its liveness probe: a connect would hang for pool.connectTimeoutMs and
    // hold up the next discovery. Asked again once it answers (or discovery names another).
    if (this.#liveness.unresponsive(candidate)) return
    try {
      const lease = await candidate.pool.acquire('write', this.#abort.signal)
      lease.release()
    } catch (err) {
      if (this.#closed) return
      this.lastConfirmError = toError(err)
      const c = classifyError(err, { phase: 'connect', sent: false, connectionLost: true })
      publish(channels.confirmFailed, {
        member: candidate.name,
        errorClass: c.class,
        sqlState: c.sqlState,
        errorCode: c.errorCode,
      })
      if (isRoleMismatch(err)) {
        // Patroni names the leader a moment before promotion finishes: check again soon.
        this.#candidateInRecovery = true
        publish(channels.roleMismatch, { member: candidate.name, expected: 'primary' })
      }
      return
    }
    if (this.#closed || this.discoveredPrimary() !== candidate) return
    candidate.downUntil = 0
    this.lastConfirmError = null
    const previous = this.gate.suspectedAt
    this.gate.confirm(candidate)
    this.timelines.confirmed(candidate)
    publish(channels.confirmed, { member: candidate.name, suspectedAt: previous })
  }

  /**
   * Polls each replica's replay position and, with `full`, the primary's current position
   * (one short query per member, in parallel, bounded by probeTimeoutMs). Concurrent callers
   * share a poll of the replicas, and (separately) one of the primary.
   */
  refreshLsns(full = false): Promise<void> {
    const replicas = this.#replicaFlight.do('replicas', this.#pollReplicas)
    if (!full || this.gate.writer === null) return replicas
    return Promise.all([replicas, this.refreshWriter()]).then(noop)
  }

  /** Polls the confirmed primary's current WAL position and timeline (concurrent callers share it). */
  refreshWriter(): Promise<void> {
    return this.#writerFlight.do('writer', this.#pollWriter)
  }

  #pollWriter = async (): Promise<void> => {
    const writer = this.gate.writer
    if (writer === null) return
    await this.#probe(writer, WRITER_POLL_SQL, true)
    this.#afterPoll()
    if (this.gate.writer === writer && writer.lsnTimeline !== null)
      this.#onWriterTimeline(writer, writer.lsnTimeline)
  }

  /** The confirmed writer measured on timeline `tl`: count its writes there, look for a regression, learn the history. */
  #onWriterTimeline(writer: Member, tl: number): void {
    this.timelines.sample(writer, tl)
    const e = this.timelines.check(writer, tl)
    if (e) {
      publish(channels.timelineRegression, e)
      this.timelineRegressions.emit(e)
    }
    if (this.#systemIdOf !== writer) void this.#fetchSystemId(writer)
    if (this.#history?.timeline !== tl && performance.now() - this.#historyAskedAt >= HISTORY_RETRY_MS) {
      void this.#historyFlight.do('history', () => this.#fetchHistory(writer, tl))
    }
  }

  /** One short query on the writer; null on any failure (the writer poll reports its health). */
  async #ask<R extends Record<string, unknown>>(
    m: Member,
    sql: string,
    values?: unknown[],
  ): Promise<R | null> {
    let lease: Awaited<ReturnType<MemberPool['acquire']>> | undefined
    try {
      lease = await m.pool.acquire('read', this.#abort.signal)
      const r = await lease.query<R>(sql, values, this.#opts.monitor.probeTimeoutMs, this.#abort.signal)
      lease.release()
      return r.rows[0] ?? null
    } catch {
      lease?.release(true)
      return null
    }
  }

  async #fetchSystemId(writer: Member): Promise<void> {
    const row = await this.#ask<{ s: unknown }>(
      writer,
      'SELECT system_identifier::text AS s FROM pg_control_system()',
    )
    if (this.gate.writer !== writer || typeof row?.s !== 'string') return
    this.#systemId = row.s
    this.#systemIdOf = writer
  }

  /**
   * The history of timeline `tl`: from discovery (Patroni `GET /history`) when it describes
   * `tl` (Patroni refreshes it a loop late), else the timeline history file on the primary
   * (`pg_read_file`, which needs superuser or pg_read_server_files). Unknown: asked again
   * every HISTORY_RETRY_MS.
   */
  async #fetchHistory(writer: Member, tl: number): Promise<void> {
    this.#historyAskedAt = performance.now()
    let switches: readonly TimelineSwitch[] | null = tl === 1 ? [] : null
    if (switches === null && this.#discovery.history) {
      const list = await this.#discovery.history(this.#abort.signal).catch(() => null)
      switches = historyOf(list, tl)
    }
    if (switches === null) {
      const file = `pg_wal/${tl.toString(16).toUpperCase().padStart(8, '0')}.history`
      const row = await this.#ask<{ h: unknown }>(writer, 'SELECT pg_read_file($1) AS h', [file])
      switches = historyOf(parseHistoryFile(row?.h), tl)
    }
    if (switches !== null && this.#primaryTimeline === tl) this.#history = { timeline: tl, switches }
  }

  /** The primary's timeline, system identifier and timeline history as known now. */
  timelineInfo(): TimelineInfo {
    const timeline = this.#primaryTimeline
    const h = this.#history
    return {
      timeline,
      systemId: this.#systemId,
      history: h !== null && h.timeline === timeline ? h.switches : null,
    }
  }

  /** Where timeline `tl` ended on the primary's history: undefined when the history is unknown, null when `tl` is not an ancestor. */
  timelineEnd(tl: number): bigint | null | undefined {
    const h = this.#history
    if (h === null || h.timeline !== this.#primaryTimeline) return undefined
    for (const s of h.switches) if (s.timeline === tl) return s.endLsn
    return null
  }

  #pollReplicas = async (): Promise<void> => {
    const writer = this.gate.writer
    const jobs: Promise<void>[] = []
    for (const m of this.members.values()) {
      // a replica that discovery says is stopped/starting gets no probe (and no reads)
      if (m.role === 'replica' && m !== writer && (m.state === 'running' || m.state === 'streaming')) {
        jobs.push(this.#probe(m, REPLICA_POLL_SQL, false))
      }
    }
    await Promise.all(jobs)
    this.#afterPoll()
  }

  /** One position query on `m`; never rejects (a failure is reported as the data path would). */
  async #probe(m: Member, sql: string, isWriter: boolean): Promise<void> {
    let lease: Awaited<ReturnType<MemberPool['acquire']>> | undefined
    const epoch = m.lsnEpoch
    const role = m.role
    try {
      lease = await m.pool.acquire('read', this.#abort.signal)
      const r = await lease.query<{ lsn: string | null; r: boolean; tl: unknown; f: unknown }>(
        sql,
        undefined,
        this.#opts.monitor.probeTimeoutMs,
        this.#abort.signal,
      )
      lease.release()
      const row = r.rows[0]
      // Stored only if nothing reset the member meanwhile, and from its current pool generation.
      if (m.lsnEpoch === epoch && m.role === role && lease.generation === m.pool.generation) {
        m.lsn = parseLsn(row?.lsn)
        // the writer: its insert timeline; a replica: the timeline its WAL receiver streams
        // (needs pg_read_all_stats), else the one discovery reports
        m.lsnTimeline =
          m.lsn === null
            ? null
            : isWriter
              ? timelineOfWalFile(row?.f)
              : (parseTimeline(row?.tl) ?? m.timeline)
      }
      if (!isWriter && m.downUntil > 0) m.downUntil = 0
      if (isWriter && row?.r !== false && this.gate.writer === m) {
        // the writer is in recovery: it was demoted under us
        publish(channels.roleMismatch, { member: m.name, expected: 'primary' })
        this.suspect('in-recovery')
      }
    } catch (err) {
      const c = classifyError(err, {
        phase: lease ? 'query' : 'connect',
        sent: lease?.sent ?? false,
        connectionLost: lease?.lost ?? true,
      })
      // a probe is tiny: no answer within probeTimeoutMs means the member is sick
      if (ResilientError.is(err, 'E_TIMEOUT')) c.failoverSignal = true
      lease?.release(true)
      if (!this.#closed) this.reportFailure(m, lease?.generation ?? m.pool.generation, c)
    }
  }

  /** Recomputes each replica's lag from the last positions polled, and which replicas are off the primary's timeline. */
  #afterPoll(): void {
    const writer = this.gate.writer
    const primaryLsn = writer?.lsn ?? null
    if (primaryLsn !== null) {
      for (const m of this.members.values()) {
        if (m.role !== 'replica' || m.lsn === null) continue
        // positions on different timelines do not subtract (and such a replica gets no reads)
        if (m.lsnTimeline !== null && writer?.lsnTimeline != null && m.lsnTimeline !== writer.lsnTimeline) {
          m.measuredLagBytes = null
          continue
        }
        const lag = primaryLsn - m.lsn
        m.measuredLagBytes = lag > 0n ? Number(lag) : 0
      }
    }
    this.#updateTimelines()
  }

  /**
   * The primary's timeline (measured on the writer, else as discovery reports it; the last one
   * known while no writer is confirmed), and for each replica whether it is on another one.
   */
  #updateTimelines(): void {
    const writer = this.gate.writer
    if (writer !== null) {
      const tl = writer.lsnTimeline ?? writer.timeline
      if (tl !== null) this.#primaryTimeline = tl
    }
    const ptl = this.#primaryTimeline
    for (const m of this.members.values()) {
      if (m === writer || m.role !== 'replica') {
        m.offTimeline = false
        continue
      }
      const tl = m.lsnTimeline ?? m.timeline
      const off = ptl !== null && tl !== null && tl !== ptl
      if (off && !m.offTimeline) {
        publish(channels.replicaExcluded, { member: m.name, reason: 'timeline' })
      }
      m.offTimeline = off
    }
  }

  /** The confirmed primary's timeline as last measured; null before one is known. */
  get primaryTimeline(): number | null {
    return this.#primaryTimeline
  }

  /** The confirmed primary's insert position as last polled, on `primaryTimeline`; null when unknown. */
  primaryLsn(): bigint | null {
    const w = this.gate.writer
    return w !== null && w.lsnTimeline !== null && w.lsnTimeline === this.#primaryTimeline ? w.lsn : null
  }

  topology(): Topology {
    const writer = this.gate.writer
    const now = performance.now()
    const eligible = new Set(
      eligibleReplicas(this.members.values(), { maxLagBytes: this.#opts.replicas.maxLagBytes, now }),
    )
    const replicas = []
    const others = []
    for (const m of this.members.values()) {
      if (m === writer) continue
      if (m.role === 'replica') replicas.push(viewOf(m, eligible.has(m)))
      else others.push(viewOf(m, false))
    }
    const t: Topology = {
      primary: writer ? viewOf(writer, true) : null,
      replicas,
      others,
      updatedAt: this.lastDiscoveryAt,
      source: this.lastDiscoverySource,
    }
    if (this.conflict) t.conflict = [...this.conflict]
    return t
  }

  #emitTopologyIfChanged(): void {
    const t = this.topology()
    const sig = JSON.stringify([
      t.primary?.name ?? null,
      t.replicas.map((r) => `${r.name}:${r.state}:${r.healthy}`),
      t.others.map((r) => `${r.name}:${r.role}:${r.state}`),
      t.conflict ?? null,
    ])
    if (sig === this.#lastSignature) return
    this.#lastSignature = sig
    publish(channels.topology, {
      primary: t.primary?.name ?? null,
      replicas: t.replicas.map((r) => r.name),
      source: t.source,
    })
    this.topologyChanges.emit(t)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#timer)
    this.#liveness.close()
    this.#abort.abort(new ResilientError('E_SHUTTING_DOWN', 'the router is closing', { noStack: true }))
    this.gate.close(new ResilientError('E_SHUTTING_DOWN', 'the router is closed'))
    await this.#running?.catch(() => {})
    await Promise.all(
      [...this.members.values()].map((m) => {
        m.unobserve()
        return m.pool.close(5_000)
      }),
    )
    await this.#discovery.close().catch(() => {})
  }
}
