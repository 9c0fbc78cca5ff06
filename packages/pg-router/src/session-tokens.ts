import { createHmac, timingSafeEqual } from 'node:crypto'
import { inspect } from 'node:util'
import { publish } from '@resilient/core'
import { channels } from './channels.js'
import { decodeToken, encodeToken, type WalPosition } from './session.js'

/**
 * Session tokens from outside: signed (HMAC-SHA256 with `session.secret`) and checked, and
 * every session position reconciled with the cluster before a read relies on it. A token is
 * untrusted input: one that is forged, truncated, wrongly signed, beyond the primary's
 * position or on a timeline the cluster has not reached is ignored as if absent (the read goes
 * where a plain read goes), counted, and never makes a read fail or wait longer than
 * `session.maxWaitMs`.
 *
 * A signed token is `<payload>.<signature>`: the payload is the unsigned token (base64url of
 * `{"v":2,"lsn":"0/3000060","tl":3}`), the signature the first 16 bytes of
 * HMAC-SHA256(secret, payload), base64url. With a list of secrets, the first signs and any
 * verifies (rotation: add the new one first, drop the old one once its tokens expired).
 */

/** Why a token or a session position was ignored (the `badToken` channel's `reason`, with the decode reasons). */
export type PositionRejection = 'signature' | 'timeline' | 'ahead' | 'lost'

/** Counters of `stats().tokens`. */
export interface TokenStats {
  /** Tokens that did not parse (malformed, truncated, too long, unknown version): ignored. */
  malformed: number
  /** `session.secret` is set and the token's signature is missing or wrong: ignored. */
  badSignature: number
  /** Positions on a timeline the cluster has not reached: ignored. */
  unknownTimeline: number
  /** Positions beyond the primary's current one: ignored. */
  aheadOfPrimary: number
  /** Positions on an earlier timeline past where it ended (not in the primary's history: the write did not survive a failover): ignored. */
  lostInFailover: number
  /** Positions of an earlier timeline moved onto the primary's (still valid there). */
  rebased: number
}

/** What reconciliation needs to know of the cluster (the monitor). */
export interface ClusterView {
  /** The confirmed primary's timeline; null before one is known. */
  readonly primaryTimeline: number | null
  /** The confirmed primary's insert position as last polled, on `primaryTimeline`; null when unknown. */
  primaryLsn(): bigint | null
  /** Where timeline `tl` ended on the primary's history: undefined unknown, null not an ancestor. */
  timelineEnd(tl: number): bigint | null | undefined
  /** Polls the primary's position now (shared by concurrent callers, bounded by the probe timeout). */
  refreshWriter(): Promise<void>
}

/** Read from the primary, without waiting: the position could not be checked in time. */
export const UNCHECKED: WalPosition = Object.freeze({ lsn: (1n << 64n) - 1n, timeline: null })

const SIGNATURE_BYTES = 16

export class SessionTokens {
  readonly stats: TokenStats = {
    malformed: 0,
    badSignature: 0,
    unknownTimeline: 0,
    aheadOfPrimary: 0,
    lostInFailover: 0,
    rebased: 0,
  }
  readonly #keys: Buffer[]
  readonly #view: ClusterView
  readonly #maxWaitMs: number

  constructor(secret: string | readonly string[] | undefined, view: ClusterView, maxWaitMs: number) {
    const list = secret === undefined ? [] : typeof secret === 'string' ? [secret] : secret
    this.#keys = list.map((k) => Buffer.from(k, 'utf8'))
    this.#view = view
    this.#maxWaitMs = maxWaitMs
  }

  /** Tokens ignored so far, for any reason (`stats().badTokens`). */
  get ignored(): number {
    const s = this.stats
    return s.malformed + s.badSignature + s.unknownTimeline + s.aheadOfPrimary + s.lostInFailover
  }

  /** The token of `pos`, signed when a secret is set. */
  encode(pos: WalPosition): string {
    const payload = encodeToken(pos)
    const key = this.#keys[0]
    return key === undefined ? payload : `${payload}.${this.#sign(key, payload)}`
  }

  /**
   * The position in `token`, or null (counted, published) when it cannot be used. `trusted`:
   * it was signed with one of our keys, so it was written by a router that had it.
   */
  open(token: unknown): { pos: WalPosition; trusted: boolean } | null {
    const text = typeof token === 'string' ? token : ''
    const dot = text.indexOf('.')
    const payload = dot === -1 ? token : text.slice(0, dot)
    const decoded = decodeToken(payload)
    if (!decoded.ok || (dot !== -1 && text.length > 256)) {
      this.stats.malformed++
      publish(channels.badToken, { reason: decoded.ok ? 'bad-length' : decoded.reason })
      return null
    }
    let trusted = false
    if (this.#keys.length > 0) {
      const sig = dot === -1 ? '' : text.slice(dot + 1)
      if (!this.#verify(payload as string, sig)) {
        this.stats.badSignature++
        publish(channels.badToken, { reason: 'signature' })
        return null
      }
      trusted = true
    }
    return { pos: { lsn: decoded.data.lsn, timeline: decoded.data.timeline ?? null }, trusted }
  }

  #sign(key: Buffer, payload: string): string {
    return createHmac('sha256', key)
      .update(payload)
      .digest()
      .subarray(0, SIGNATURE_BYTES)
      .toString('base64url')
  }

  #verify(payload: string, sig: string): boolean {
    if (!/^[A-Za-z0-9_-]{22}$/.test(sig)) return false
    const given = Buffer.from(sig, 'base64url')
    if (given.length !== SIGNATURE_BYTES) return false
    let ok = false
    for (const key of this.#keys) {
      const want = createHmac('sha256', key).update(payload).digest().subarray(0, SIGNATURE_BYTES)
      if (timingSafeEqual(want, given)) ok = true
    }
    return ok
  }

  /**
   * `pos` reconciled with the cluster: `pos` itself when nothing changes (trusted and valid, or
   * nothing to judge it by yet); a new position when it was checked now (an untrusted one found
   * valid) or moved onto the primary's timeline (an earlier timeline's position still in its
   * history); null when it must be ignored (counted); or a promise of one of those when the
   * primary's position must be polled first (an untrusted position beyond the one known),
   * settling within `session.maxWaitMs` (UNCHECKED, for this read only, when the poll is late).
   */
  reconcile(pos: WalPosition, trusted: boolean): WalPosition | null | Promise<WalPosition | null> {
    const r = this.#judge(pos, trusted)
    if (r !== 'poll') return r
    return this.#pollThenJudge(pos, trusted)
  }

  #judge(pos: WalPosition, trusted: boolean, polled = false): WalPosition | null | 'poll' {
    const view = this.#view
    const ptl = view.primaryTimeline
    if (ptl === null || pos.timeline === null) return pos // nothing to judge by yet / primary only
    let p = pos
    if (pos.timeline > ptl) {
      // our view may be a poll late (a failover another process saw first)
      if (!polled) return 'poll'
      return this.#reject('timeline')
    }
    if (pos.timeline < ptl) {
      const end = view.timelineEnd(pos.timeline)
      if (end === null || (end !== undefined && pos.lsn > end)) return this.#reject('lost')
      // On the primary's history up to `end` (or, history unknown, at worst a write that did
      // not survive: no member has it, so any member past its position is as good as another).
      p = { lsn: pos.lsn, timeline: ptl }
    }
    if (!trusted) {
      const plsn = this.#primaryLsn(ptl)
      if (plsn === null || p.lsn > plsn) {
        if (!polled) return 'poll'
        if (plsn === null) return UNCHECKED
        return this.#reject('ahead')
      }
    }
    if (p !== pos) {
      this.stats.rebased++
      return p
    }
    // checked now: a new object tells the session it may trust it from now on
    return trusted ? pos : { lsn: pos.lsn, timeline: pos.timeline }
  }

  /** The highest position the primary is known to have reached on `ptl`: polled, or reached by a write of ours. */
  #primaryLsn(ptl: number): bigint | null {
    const polled = this.#view.primaryLsn()
    const own = this.#own
    if (own === null || own.timeline !== ptl) return polled
    return polled === null || own.lsn > polled ? own.lsn : polled
  }

  #own: WalPosition | null = null

  /** A write of this router reached `pos` on the primary (so the primary is at least there). */
  observed(pos: WalPosition): void {
    const own = this.#own
    if (pos.timeline === null) return
    if (
      own === null ||
      pos.timeline > (own.timeline ?? 0) ||
      (pos.timeline === own.timeline && pos.lsn > own.lsn)
    ) {
      this.#own = pos
    }
  }

  async #pollThenJudge(pos: WalPosition, trusted: boolean): Promise<WalPosition | null> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(resolve, this.#maxWaitMs, 'late')
    })
    try {
      const r = await Promise.race([this.#view.refreshWriter().catch(() => undefined), late])
      if (r === 'late') return UNCHECKED
    } finally {
      clearTimeout(timer)
    }
    const j = this.#judge(pos, trusted, true)
    return j === 'poll' ? UNCHECKED : j
  }

  #reject(reason: PositionRejection): null {
    const s = this.stats
    if (reason === 'timeline') s.unknownTimeline++
    else if (reason === 'ahead') s.aheadOfPrimary++
    else if (reason === 'lost') s.lostInFailover++
    publish(channels.badToken, { reason })
    return null
  }

  [inspect.custom](): string {
    return `SessionTokens { signed: ${this.#keys.length > 0} }`
  }
}
