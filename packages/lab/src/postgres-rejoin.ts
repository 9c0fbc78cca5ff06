/**
 * Bringing a member back: startMember() and rejoinReplicas() watch a member until the leader's
 * pg_stat_replication lists it as streaming, and re-clone it (POST /reinitialize) when its
 * timeline diverged in a kill (see the README's "Rejoining after a kill").
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs'
import type { LabContext } from './context.js'
import {
  apiUrl,
  fileSize,
  type PostgresCluster,
  REPLICA_ROLES,
  RUNNING_STATES,
  type StartMemberOptions,
  type StartMemberResult,
} from './postgres.js'
import { errorMessage, isProcessAlive, waitFor } from './util.js'

export class MemberRejoin {
  readonly #ctx: LabContext
  readonly #pg: PostgresCluster

  constructor(ctx: LabContext, pg: PostgresCluster) {
    this.#ctx = ctx
    this.#pg = pg
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
    this.#ctx.refresh()
    const member = this.#pg.member(name)
    if (member.pid && isProcessAlive(member.pid))
      throw new Error(`member ${name} is already running (pid ${member.pid})`)
    const logOffset = fileSize(member.logPath)
    const started = performance.now()
    await this.#pg.spawnPatroni(member)
    this.#ctx.log(`started ${name} (pid ${member.pid})`)
    if (opts.wait === false) return { name, role: 'unknown', reinitialized: false, seconds: 0 }
    return this.#bringBack(name, started, logOffset, {
      timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs,
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
    this.#ctx.refresh()
    const leader = await this.#pg.waitForPrimary({ timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs })
    const started = performance.now()
    const others = this.#ctx.state.members.filter(
      (m) => m.name !== leader.name && m.pid !== undefined && isProcessAlive(m.pid),
    )
    return Promise.all(
      others.map((m) =>
        this.#bringBack(m.name, started, this.#pg.logMark(m.name) ?? fileSize(m.logPath), {
          timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs,
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
    const member = this.#pg.member(name)
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
          this.#ctx.log(`${name} stuck (${reason}): POST /reinitialize (force)`)
        }
        return undefined
      },
      { timeoutMs: opts.timeoutMs, intervalMs: 250 },
    )
    const seconds = Math.round((performance.now() - started) / 100) / 10
    this.#ctx.log(`${name} back as ${role} in ${seconds} s${reinitialized ? ' (reinitialized)' : ''}`)
    return { name, role, reinitialized, seconds, ...(reason && reinitialized ? { reason } : {}) }
  }

  /** Is `name` the running writable leader, or a replica streaming from the leader? */
  async #rejoinProbe(
    name: string,
  ): Promise<
    { done: true; role: 'leader' | 'replica' } | { done: false; state?: string; hasLeader: boolean }
  > {
    const cluster = await this.#pg.cluster()
    const m = cluster.members.find((x) => x.name === name)
    const leader = cluster.members.find((x) => x.role === 'leader' && x.state === 'running')
    if (!leader) return { done: false, ...(m ? { state: m.state } : {}), hasLeader: false }
    if (m && leader.name === name) {
      const rows = await this.#pg.sql('select pg_is_in_recovery()', name).catch(() => [])
      if (rows[0]?.[0] === 'f') return { done: true, role: 'leader' }
      return { done: false, state: m.state, hasLeader: true }
    }
    if (m && REPLICA_ROLES.has(m.role) && RUNNING_STATES.has(m.state)) {
      const rows = await this.#pg
        .sql(
          `select 1 from pg_stat_replication where application_name = '${name}' and state = 'streaming'`,
          leader.name,
        )
        .catch(() => [])
      if (rows.length > 0) return { done: true, role: 'replica' }
    }
    return { done: false, ...(m ? { state: m.state } : {}), hasLeader: true }
  }

  /** POST /reinitialize {"force": true} on a member; true when Patroni accepted it. */
  async #reinitialize(name: string): Promise<boolean> {
    const member = this.#pg.member(name)
    try {
      const res = await fetch(`${apiUrl(member)}/reinitialize`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ force: true }),
        signal: AbortSignal.timeout(5000),
      })
      const text = await res.text()
      if (!res.ok) this.#ctx.log(`POST /reinitialize on ${name}: ${res.status} ${text.trim()}`)
      return res.ok
    } catch (err) {
      this.#ctx.log(`POST /reinitialize on ${name}: ${errorMessage(err)}`)
      return false
    }
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
