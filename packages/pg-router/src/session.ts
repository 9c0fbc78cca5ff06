import type { QueryResult, QueryResultRow } from 'pg'
import { formatLsn, parseLsn } from './topology.js'

/**
 * Read-your-writes. A session remembers the WAL position (LSN and timeline) the primary had
 * reached right after its last write; its reads go to a replica on that same timeline whose
 * replayed position (polled by the monitor) has passed it, else wait up to
 * `session.maxWaitMs`, else go to the primary. WAL positions of different timelines are not
 * comparable (after a failover a rejoining old primary may be "ahead" without the write), so
 * a replica on another timeline never serves the session, and neither does a position with
 * no known timeline.
 *
 * The token is opaque to callers: base64url of `{"v":2,"lsn":"0/3000060","tl":3}`. It can be
 * put in a cookie or header and resumed in another process with `db.session(token)`. Version
 * 1 tokens (`{"v":1,"lsn":...}`, no timeline) still parse: their reads go to the primary
 * until the session writes again.
 */

/** A WAL position: an LSN on a timeline (null: unknown, which only the primary satisfies). */
export interface WalPosition {
  lsn: bigint
  timeline: number | null
}

export interface SessionTokenData {
  lsn: bigint
  /** Absent or null: unknown (a version 1 token). */
  timeline?: number | null | undefined
}

export function encodeToken(data: SessionTokenData): string {
  const o: { v: number; lsn: string; tl?: number } = { v: 2, lsn: formatLsn(data.lsn) }
  if (data.timeline != null) o.tl = data.timeline
  return Buffer.from(JSON.stringify(o)).toString('base64url')
}

/** Never throws: a token that cannot be used is reported as `{ ok: false, reason }`. */
export function decodeToken(
  token: unknown,
): { ok: true; data: SessionTokenData } | { ok: false; reason: string } {
  if (typeof token !== 'string') return { ok: false, reason: 'not-a-string' }
  if (token.length === 0 || token.length > 256) return { ok: false, reason: 'bad-length' }
  if (!/^[A-Za-z0-9_-]+$/.test(token)) return { ok: false, reason: 'not-base64url' }
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'))
  } catch {
    return { ok: false, reason: 'not-json' }
  }
  if (typeof parsed !== 'object' || parsed === null) return { ok: false, reason: 'not-an-object' }
  const o = parsed as { v?: unknown; lsn?: unknown; tl?: unknown }
  if (o.v !== 1 && o.v !== 2) return { ok: false, reason: 'unknown-version' }
  const lsn = parseLsn(o.lsn)
  if (lsn === null) return { ok: false, reason: 'bad-lsn' }
  if (o.v === 1 || o.tl === undefined) return { ok: true, data: { lsn, timeline: null } }
  if (typeof o.tl !== 'number' || !Number.isSafeInteger(o.tl) || o.tl < 1) {
    return { ok: false, reason: 'bad-timeline' }
  }
  return { ok: true, data: { lsn, timeline: o.tl } }
}

export interface StatementOptions {
  signal?: AbortSignal | undefined
}

export interface WriteOptions extends StatementOptions {
  /** Running it twice is harmless: it may be retried when the outcome of an attempt is unknown. @default false */
  idempotent?: boolean
}

export type IsolationLevel = 'read committed' | 'repeatable read' | 'serializable'

export interface TransactionOptions extends StatementOptions {
  /** A read-only transaction; it may run on a replica. @default false */
  readOnly?: boolean
  /** @default the server's default_transaction_isolation */
  isolationLevel?: IsolationLevel
  /**
   * Run `fn` again (on the new primary, after a failover) when the connection died before
   * COMMIT was sent, so the transaction certainly did not commit. Only for a `fn` whose side
   * effects outside this transaction may happen twice. At most 3 runs, within
   * `failover.timeoutMs` of the call. A connection lost after COMMIT was sent is never
   * retried (E_COMMIT_UNKNOWN). @default false
   */
  retry?: boolean
}

/** What `db.transaction(fn)` passes to `fn`: one connection, pinned for the whole transaction. */
export interface TransactionClient {
  query<R extends QueryResultRow = any>(
    text: string | { text: string; values?: unknown[] },
    values?: unknown[],
  ): Promise<QueryResult<R>>
}

/** What a session needs from the router. */
export interface SessionHost {
  readAfter<R extends QueryResultRow>(
    text: string,
    values: unknown[] | undefined,
    min: WalPosition | null,
    options: StatementOptions | undefined,
  ): Promise<QueryResult<R>>
  writeTracked<R extends QueryResultRow>(
    text: string,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    onPosition: (pos: WalPosition) => void,
  ): Promise<QueryResult<R>>
  transactionTracked<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    options: TransactionOptions | undefined,
    min: WalPosition | null,
    onPosition: (pos: WalPosition) => void,
  ): Promise<T>
  /**
   * `pos` reconciled with the cluster before a read relies on it (SessionTokens.reconcile):
   * as is, moved onto the primary's timeline, null (ignore it), or a promise of either.
   */
  reconcile(pos: WalPosition, trusted: boolean): WalPosition | null | Promise<WalPosition | null>
  /** A write of this router reached `pos` on the primary. */
  observed(pos: WalPosition): void
  /** The token of `pos` (signed when session.secret is set). */
  encode(pos: WalPosition): string
}

/**
 * Where a session stands after a write that reached `b`, having stood at `a`. A write whose
 * position is unknown (`b.timeline` null) makes the session read from the primary; a known
 * position after an unknown one replaces it (the later write's position covers the earlier
 * write, on whatever timeline); on one timeline the higher LSN wins (concurrent writes), and
 * across timelines the newer one.
 */
export function laterPosition(a: WalPosition | null, b: WalPosition): WalPosition {
  if (a === null || b.timeline === null || a.timeline === null) return b
  if (b.timeline !== a.timeline) return b.timeline > a.timeline ? b : a
  return b.lsn > a.lsn ? b : a
}

export class Session {
  #pos: WalPosition | null
  /** `#pos` came from this router's own write, a signed token, or was checked against the cluster. */
  #trusted: boolean
  #tokenOf: WalPosition | null = null
  #token = ''
  readonly #host: SessionHost

  /** `trusted: false`: a position from an unsigned token, checked against the cluster before its first use. */
  constructor(host: SessionHost, pos: WalPosition | null, trusted = true) {
    this.#host = host
    this.#pos = pos
    this.#trusted = trusted
  }

  /** The WAL position this session must see; null before its first write. */
  get lsn(): string | null {
    return this.#pos === null ? null : formatLsn(this.#pos.lsn)
  }

  /** The timeline of that position; null before the first write or when unknown. */
  get timeline(): number | null {
    return this.#pos?.timeline ?? null
  }

  /** Opaque, URL-safe; resume with `db.session(token)`. Empty string before the first write. */
  get token(): string {
    const pos = this.#pos
    if (pos === null) return ''
    if (this.#tokenOf !== pos) {
      this.#token = this.#host.encode(pos)
      this.#tokenOf = pos
    }
    return this.#token
  }

  #advance = (pos: WalPosition) => {
    this.#host.observed(pos)
    const next = laterPosition(this.#pos, pos)
    if (next === pos) this.#trusted = true
    this.#pos = next
  }

  /** The position a read may rely on now (reconciled with the cluster; kept for the next read). */
  #position(): WalPosition | null | Promise<WalPosition | null> {
    const pos = this.#pos
    if (pos === null) return null
    const r = this.#host.reconcile(pos, this.#trusted)
    if (r === pos) return pos
    if (r instanceof Promise) return r.then((p) => this.#settle(pos, p))
    return this.#settle(pos, r)
  }

  /** A new position from reconciliation replaces `from` (checked now, or moved); null: `from` is ignored. */
  #settle(from: WalPosition, to: WalPosition | null): WalPosition | null {
    if (to === from) return to
    if (to !== null && to.timeline === null) return to // could not be checked in time: this read only
    if (this.#pos === from) {
      this.#pos = to
      this.#trusted = true
    }
    return to
  }

  read<R extends QueryResultRow = any>(
    text: string,
    values?: unknown[],
    options?: StatementOptions,
  ): Promise<QueryResult<R>> {
    const min = this.#position()
    if (min instanceof Promise) return min.then((m) => this.#host.readAfter<R>(text, values, m, options))
    return this.#host.readAfter<R>(text, values, min, options)
  }

  write<R extends QueryResultRow = any>(
    text: string,
    values?: unknown[],
    options?: WriteOptions,
  ): Promise<QueryResult<R>> {
    return this.#host.writeTracked<R>(text, values, options, this.#advance)
  }

  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: TransactionOptions): Promise<T> {
    const min = this.#position()
    if (min instanceof Promise) {
      return min.then((m) => this.#host.transactionTracked(fn, options, m, this.#advance))
    }
    return this.#host.transactionTracked(fn, options, min, this.#advance)
  }
}
