import { abortError, publish, ResilientError, sleep } from '@resilient/core'
import { channels } from './channels.js'
import { type Classification, classifyError } from './classify.js'
import { backoff, closedError, overloadBackoff, type RouterContext, timedOut } from './context.js'
import type { Lease } from './member-pool.js'
import type { WalPosition } from './session.js'
import { isEligible, type Member, parseLsn, timelineOfWalFile } from './topology.js'

/** Session position meaning "the write succeeded but its position is unknown: read from the primary". */
export const PRIMARY_ONLY: WalPosition = Object.freeze({ lsn: (1n << 64n) - 1n, timeline: null })
/**
 * The primary's WAL position right after a write, and its timeline (in the WAL file's name).
 * The insert pointer, not the write pointer (`pg_current_wal_lsn()`): with
 * `synchronous_commit = off` the commit record may not be written yet when the statement
 * returns, and a position before it would let a replica that lacks the write serve the session.
 */
const CAPTURE_SQL = 'SELECT l::text AS lsn, pg_walfile_name(l) AS f FROM pg_current_wal_insert_lsn() AS l'

/** The server refused the connection for too many clients: busy, not failing over. */
function isOverload(c: Classification): boolean {
  return c.sqlState === '53300' || c.sqlState === '53400'
}

/**
 * Where a statement goes, and a connection there: the confirmed writer (waiting for one
 * through the writer gate), or a replica within lag and, for a read-your-writes session, one
 * that has replayed the session's position (waiting for it briefly), else the primary.
 * Connect-phase failures (nothing was sent) are retried here, until the caller's deadline.
 */
export class Routing {
  #rr = 0
  readonly #ctx: RouterContext

  constructor(ctx: RouterContext) {
    this.#ctx = ctx
  }

  /** A replica for a read now (none: null): the hot path of every read. */
  pickReader(exclude: ReadonlySet<string> | null, min: WalPosition | null): Member | null {
    const { opts, gate, monitor } = this.#ctx
    const rules = {
      maxLagBytes: opts.replicas.maxLagBytes,
      now: performance.now(),
      minLsn: min?.lsn,
      minTimeline: min?.timeline,
      exclude: exclude ?? undefined,
    }
    const writer = gate.writer
    if (opts.replicas.strategy === 'least-busy') {
      let best: Member | null = null
      let bestLoad = 0
      for (const m of monitor.members.values()) {
        if (m === writer || !isEligible(m, rules)) continue
        const load = m.pool.load
        if (best === null || load < bestLoad) {
          best = m
          bestLoad = load
        }
      }
      return best
    }
    let count = 0
    for (const m of monitor.members.values()) if (m !== writer && isEligible(m, rules)) count++
    if (count === 0) return null
    let k = this.#rr++ % count
    for (const m of monitor.members.values()) {
      if (m === writer || !isEligible(m, rules)) continue
      if (k-- === 0) return m
    }
    return null
  }

  /**
   * The member a first read attempt goes to, decided synchronously (the hot path), or null
   * when only acquireReader can tell (waiting for replay, no primary confirmed).
   */
  quickReader(min: WalPosition | null): Member | null {
    const gate = this.#ctx.gate
    if (min !== null && min.timeline === null) return gate.writer
    const m = this.pickReader(null, min)
    if (m !== null) return m
    if (min === null) return this.#ctx.opts.replicas.fallbackToPrimary ? gate.writer : null
    return this.replayCanCatchUp(min) ? null : gate.writer
  }

  /**
   * Whether waiting can help `min`: some readable replica already replays its timeline (a
   * replica on another timeline has to be re-measured after discovery sees it move first).
   */
  replayCanCatchUp(min: WalPosition): boolean {
    if (min.timeline === null) return false
    const writer = this.#ctx.gate.writer
    for (const m of this.#ctx.monitor.members.values()) {
      if (m.role === 'replica' && m !== writer && m.lsnTimeline === min.timeline) return true
    }
    return false
  }

  /** Waits (bounded by session.maxWaitMs) for some replica to replay `min`. */
  async waitForReplay(
    min: WalPosition,
    exclude: ReadonlySet<string>,
    signal: AbortSignal | undefined,
  ): Promise<Member | null> {
    const until = performance.now() + this.#ctx.opts.session.maxWaitMs
    for (;;) {
      await this.#ctx.monitor.refreshLsns(false)
      const m = this.pickReader(exclude, min)
      if (m) return m
      const left = until - performance.now()
      if (left <= 0) return null
      await sleep(Math.min(10, left), signal)
    }
  }

  /**
   * A read connection: `picked` first when given, else a qualifying replica, else the primary
   * (fallbackToPrimary, or a session that needs it). Members in `tried` are skipped.
   */
  async acquireReader(
    signal: AbortSignal | undefined,
    deadline: number,
    min: WalPosition | null,
    tried: Set<string>,
    picked: Member | null = null,
  ): Promise<{ lease: Lease; member: Member }> {
    const { opts, gate } = this.#ctx
    let lastErr: unknown
    /** A member refused a connection for too many clients (53300/53400): waits grow exponentially. */
    let overloaded = false
    let overloads = 0
    for (let attempt = 1; ; attempt++) {
      if (this.#ctx.closed) throw closedError()
      if (signal?.aborted) throw abortError(signal, 'read')
      let member = picked
      picked = null
      // A position with no known timeline: only the primary is sure to have it.
      if (member === null) member = min !== null && min.timeline === null ? null : this.pickReader(tried, min)
      if (!member && min !== null && attempt === 1 && this.replayCanCatchUp(min)) {
        member = await this.waitForReplay(min, tried, signal)
      }
      if (!member) {
        if (opts.replicas.fallbackToPrimary || min !== null) {
          try {
            member = await gate.wait(signal, deadline, 'read')
          } catch (err) {
            throw timedOut(err, lastErr)
          }
          // the primary failed us too: give the replicas another chance first
          if (tried.has(member.name)) {
            tried.clear()
            await (overloaded ? overloadBackoff(overloads++, signal) : backoff(attempt, signal))
          }
        } else if (tried.size > 0 && performance.now() < deadline) {
          tried.clear()
          await (overloaded ? overloadBackoff(overloads++, signal) : backoff(attempt + 2, signal))
          continue
        } else {
          throw new ResilientError(
            'E_NO_PRIMARY',
            'no replica qualifies for reads and replicas.fallbackToPrimary is false',
            { cause: lastErr },
          )
        }
      }
      try {
        return { lease: await member.pool.acquire('read', signal), member }
      } catch (err) {
        const c = this.connectFailed('read', member, err, attempt, tried, signal)
        lastErr = err
        if (performance.now() >= deadline) throw err
        if (isOverload(c)) overloaded = true
      }
    }
  }

  /** A write-capable connection on the confirmed primary; connect-phase failures are retried until the deadline. */
  async acquireWriter(
    signal: AbortSignal | undefined,
    deadline: number,
    kind: 'read' | 'write' = 'write',
  ): Promise<{ lease: Lease; member: Member }> {
    const gate = this.#ctx.gate
    let lastErr: unknown
    let overloads = 0
    for (let attempt = 1; ; attempt++) {
      if (this.#ctx.closed) throw closedError()
      let member = gate.writer
      if (member === null || signal?.aborted) {
        try {
          member = await gate.wait(signal, deadline, kind)
        } catch (err) {
          throw timedOut(err, lastErr)
        }
      }
      try {
        return { lease: await member.pool.acquire('write', signal), member }
      } catch (err) {
        const c = this.connectFailed('write', member, err, attempt, null, signal)
        lastErr = err
        if (performance.now() >= deadline) {
          throw new ResilientError(
            'E_FAILOVER_TIMEOUT',
            'no primary connection before the failover timeout',
            {
              cause: lastErr,
            },
          )
        }
        await (isOverload(c) ? overloadBackoff(overloads++, signal) : backoff(attempt, signal))
      }
    }
  }

  /**
   * Getting a connection failed (nothing was sent): throws unless it may be retried, else
   * reports the member, counts the retry and, for a read, adds the member to `tried`.
   */
  connectFailed(
    kind: 'read' | 'write',
    member: Member,
    err: unknown,
    attempt: number,
    tried: Set<string> | null,
    signal: AbortSignal | undefined,
  ): Classification {
    if (signal?.aborted) throw abortError(signal, kind)
    const c = classifyError(err, { phase: 'connect', sent: false, connectionLost: true })
    // a role check that found a replica (demoted) sends a write back to wait for the primary
    if (c.class !== 'not-sent' && !(kind === 'write' && c.class === 'demoted')) throw err
    this.#ctx.monitor.reportFailure(member, member.pool.generation, c)
    tried?.add(member.name)
    this.#ctx.retries[kind]++
    publish(channels.retry, { kind, member: member.name, errorClass: c.class, attempt })
    return c
  }

  /** The primary's WAL position right after a write, on the same connection; PRIMARY_ONLY when unknown. */
  async capturePosition(lease: Lease, signal: AbortSignal | undefined): Promise<WalPosition> {
    try {
      const r = await lease.query<{ lsn: string; f: string }>(
        CAPTURE_SQL,
        undefined,
        this.#ctx.opts.monitor.probeTimeoutMs,
        signal,
      )
      const lsn = parseLsn(r.rows[0]?.lsn)
      const timeline = timelineOfWalFile(r.rows[0]?.f)
      return lsn === null || timeline === null ? PRIMARY_ONLY : { lsn, timeline }
    } catch {
      return PRIMARY_ONLY
    }
  }
}
