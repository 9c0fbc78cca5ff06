import type { QueryResult, QueryResultRow } from 'pg'
import { formatLsn, parseLsn } from './topology.js'

/**
 * Read-your-writes. A session remembers the WAL position (LSN) the primary had reached right
 * after its last write; its reads go to a replica whose replayed position (polled by the
 * monitor) has passed it, else wait up to `session.maxWaitMs`, else go to the primary.
 *
 * The token is opaque to callers: base64url of `{"v":1,"lsn":"0/3000060"}`. It can be put in
 * a cookie or header and resumed in another process with `db.session(token)`.
 */

export interface SessionTokenData {
  lsn: bigint
}

export function encodeToken(data: SessionTokenData): string {
  return Buffer.from(JSON.stringify({ v: 1, lsn: formatLsn(data.lsn) })).toString('base64url')
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
  const o = parsed as { v?: unknown; lsn?: unknown }
  if (o.v !== 1) return { ok: false, reason: 'unknown-version' }
  const lsn = parseLsn(o.lsn)
  if (lsn === null) return { ok: false, reason: 'bad-lsn' }
  return { ok: true, data: { lsn } }
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
    minLsn: bigint | null,
    options: StatementOptions | undefined,
  ): Promise<QueryResult<R>>
  writeTracked<R extends QueryResultRow>(
    text: string,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    onLsn: (lsn: bigint) => void,
  ): Promise<QueryResult<R>>
  transactionTracked<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    options: TransactionOptions | undefined,
    minLsn: bigint | null,
    onLsn: (lsn: bigint) => void,
  ): Promise<T>
}

export class Session {
  #lsn: bigint | null
  readonly #host: SessionHost

  constructor(host: SessionHost, lsn: bigint | null) {
    this.#host = host
    this.#lsn = lsn
  }

  /** The WAL position this session must see; null before its first write. */
  get lsn(): string | null {
    return this.#lsn === null ? null : formatLsn(this.#lsn)
  }

  /** Opaque, URL-safe; resume with `db.session(token)`. Empty string before the first write. */
  get token(): string {
    return this.#lsn === null ? '' : encodeToken({ lsn: this.#lsn })
  }

  #advance = (lsn: bigint) => {
    if (this.#lsn === null || lsn > this.#lsn) this.#lsn = lsn
  }

  read<R extends QueryResultRow = any>(
    text: string,
    values?: unknown[],
    options?: StatementOptions,
  ): Promise<QueryResult<R>> {
    return this.#host.readAfter<R>(text, values, this.#lsn, options)
  }

  write<R extends QueryResultRow = any>(
    text: string,
    values?: unknown[],
    options?: WriteOptions,
  ): Promise<QueryResult<R>> {
    return this.#host.writeTracked<R>(text, values, options, this.#advance)
  }

  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: TransactionOptions): Promise<T> {
    return this.#host.transactionTracked(fn, options, this.#lsn, this.#advance)
  }
}
