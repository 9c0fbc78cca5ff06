import { publish, ResilientError } from '@resilient/core'
import pg from 'pg'
import { channels } from './channels.js'
import { abandonMember, type Lease } from './member-pool.js'
import type { ConnectionOptions } from './options.js'
import type { Member } from './topology.js'

/**
 * Liveness: a hung member costs no more than a killed one. A frozen VM, a black-holed network
 * or a stalled disk resets no socket: nothing fails until a timer of ours fires, and a
 * statement's deadline (30 s by default) is far too long to wait for a failover. So the
 * monitor keeps one connection of its own to every member (outside the pools: a saturated or
 * drained pool never delays it) and sends `SELECT 1` on it every `monitor.livenessIntervalMs`,
 * each bounded by `monitor.probeTimeoutMs`. A member whose probe (or whose connect) gets no
 * answer in time, or whose connection breaks, is **unresponsive** until a probe succeeds again:
 *
 * - the confirmed writer is suspected (writes are held as for a killed one, its pool drained)
 *   and every statement in flight on it is abandoned at once: a write gets E_COMMIT_UNKNOWN,
 *   a read is retried elsewhere (Lease.abandon: a CancelRequest goes out, bounded);
 * - a replica gets no reads, and its statements in flight are abandoned (retried elsewhere);
 * - a discovered leader is not confirmed while it is unresponsive (no connect attempt that
 *   would hang for pool.connectTimeoutMs and hold up the monitor), and once it answers again
 *   it is confirmed by SQL on a fresh connection like any other, so a thawed old primary that
 *   discovery no longer names never gets a write.
 *
 * A server that answers with an error (53300 too many connections, 57P03 starting up, 28P01)
 * did answer: it is not unresponsive (the data path deals with it).
 */

export interface LivenessOptions {
  connection: ConnectionOptions
  intervalMs: number
  probeTimeoutMs: number
  keepAliveInitialDelayMs: number
}

export interface LivenessEvents {
  /** `m` stopped answering (or its connection broke): `reason` says how. */
  unresponsive(m: Member, reason: string): void
  /** `m` answers again after having been unresponsive. */
  alive(m: Member): void
}

/** What statements abandoned on an unresponsive member fail with (an outcome-unknown timeout). */
export function unresponsiveError(lease: Lease, probeTimeoutMs: number): ResilientError {
  return new ResilientError(
    'E_TIMEOUT',
    `${lease.member.name} stopped answering (no reply to a liveness probe within ${probeTimeoutMs} ms)`,
    { details: { member: lease.member.name, timeoutMs: probeTimeoutMs, reason: 'unresponsive' } },
  )
}

/** One member's probe loop. */
class MemberProbe {
  unresponsive = false
  #client: pg.Client | null = null
  #timer: NodeJS.Timeout | undefined
  #closed = false

  constructor(
    readonly member: Member,
    readonly opts: LivenessOptions,
    readonly events: LivenessEvents,
  ) {
    this.#schedule(0)
  }

  #schedule(ms: number): void {
    if (this.#closed) return
    this.#timer = setTimeout(() => void this.#probe(), ms)
    this.#timer.unref()
  }

  async #probe(): Promise<void> {
    const failure = await this.#bounded()
    if (this.#closed) return
    if (failure === null) {
      if (this.unresponsive) {
        this.unresponsive = false
        publish(channels.liveness, { member: this.member.name, state: 'alive' })
        this.events.alive(this.member)
      }
    } else if (!this.unresponsive) {
      this.unresponsive = true
      publish(channels.liveness, { member: this.member.name, state: 'unresponsive', reason: failure })
      this.events.unresponsive(this.member, failure)
    }
    this.#schedule(this.opts.intervalMs)
  }

  /** One probe (connecting first when needed): null when answered, else why not. Never rejects. */
  #bounded(): Promise<string | null> {
    return new Promise((resolve) => {
      let done = false
      const finish = (why: string | null) => {
        if (done) return
        done = true
        clearTimeout(timer)
        resolve(why)
      }
      const bound = this.opts.probeTimeoutMs
      const judge = () => {
        if (done) return
        this.#drop()
        finish('timeout')
      }
      const due = performance.now() + bound
      let timer = setTimeout(function expired() {
        // This process, not the member, may have been stalled past the bound (a blocked event
        // loop, a starved CPU): then the answer may be in and unread. Give it as long again as
        // we were late (once), and let the poll phase deliver what arrived before judging.
        const late = performance.now() - due
        if (late > 20 && !extended) {
          extended = true
          timer = setTimeout(expired, Math.min(late, bound))
          timer.unref()
          return
        }
        setImmediate(judge)
      }, bound)
      let extended = false
      timer.unref()
      this.#once().then(
        () => finish(null),
        (err: unknown) => {
          // an error the server sent (53300, 57P03...) is an answer; a broken, refused or
          // timed-out connection is not
          const answered = typeof err === 'object' && err !== null && 'severity' in err
          if (!answered || this.#lost()) this.#drop()
          const code = (err as { code?: unknown } | null)?.code
          finish(answered ? null : typeof code === 'string' ? code : 'connection-lost')
        },
      )
    })
  }

  async #once(): Promise<void> {
    let client = this.#client
    if (client === null) {
      client = this.#newClient()
      this.#client = client
      try {
        await client.connect()
      } catch (err) {
        if (this.#client === client) this.#drop()
        throw err
      }
    }
    await client.query('SELECT 1')
  }

  #newClient(): pg.Client {
    const o = this.opts
    // The options object keeps its non-enumerable password: it is the prototype of what pg reads.
    const config = Object.create(o.connection, {
      host: { value: this.member.host, enumerable: true },
      port: { value: this.member.port, enumerable: true },
      keepAlive: { value: true, enumerable: true },
      keepAliveInitialDelayMillis: { value: o.keepAliveInitialDelayMs, enumerable: true },
      connectionTimeoutMillis: { value: o.probeTimeoutMs, enumerable: true },
    }) as pg.ClientConfig
    const client = new pg.Client(config)
    client.on('error', () => {
      if (this.#client === client) this.#client = null
    })
    return client
  }

  #lost(): boolean {
    const c = this.#client as unknown as { _queryable?: boolean; _ending?: boolean } | null
    return c === null || c._queryable === false || c._ending === true
  }

  /** Gives the probe connection up (a hung server never answers a Terminate). */
  #drop(): void {
    const c = this.#client
    this.#client = null
    if (c === null) return
    const stream = (c as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream
    if (stream?.destroy) stream.destroy()
    else c.end().catch(() => {})
  }

  close(): void {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#drop()
  }
}

/** The monitor's liveness probes, one per member it knows. */
export class Liveness {
  readonly #probes = new Map<Member, MemberProbe>()
  readonly #opts: LivenessOptions
  readonly #events: LivenessEvents
  #closed = false

  constructor(opts: LivenessOptions, events: LivenessEvents) {
    this.#opts = opts
    this.#events = events
  }

  /** Probe exactly `members` (new ones start now; gone ones stop). No-op when liveness is off. */
  sync(members: Iterable<Member>): void {
    if (this.#closed || this.#opts.intervalMs === 0) return
    const keep = new Set(members)
    for (const [m, p] of this.#probes) {
      if (keep.has(m)) continue
      p.close()
      this.#probes.delete(m)
    }
    for (const m of keep)
      if (!this.#probes.has(m)) this.#probes.set(m, new MemberProbe(m, this.#opts, this.#events))
  }

  /** `m` has not answered its last probe. */
  unresponsive(m: Member): boolean {
    return this.#probes.get(m)?.unresponsive === true
  }

  close(): void {
    this.#closed = true
    for (const p of this.#probes.values()) p.close()
    this.#probes.clear()
  }
}

/**
 * What the monitor does when `m` stops answering: fails every statement in flight on it at
 * once (writes: E_COMMIT_UNKNOWN; reads: retried elsewhere), after `suspect` has held writes
 * (the writer) or the member was taken out of the read rotation (a replica).
 */
export function abandonUnresponsive(m: Member, probeTimeoutMs: number): number {
  return abandonMember(m.pool, Number.MAX_SAFE_INTEGER, (lease) => unresponsiveError(lease, probeTimeoutMs))
}
