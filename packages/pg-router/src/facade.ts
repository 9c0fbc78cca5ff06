import { EventEmitter } from 'node:events'
import type { PoolClient, QueryConfig, QueryResult } from 'pg'
import type { Lease } from './member-pool.js'

export interface FacadeBackend {
  query(text: string | QueryConfig, values: unknown[] | undefined): Promise<QueryResult>
  acquire(signal?: AbortSignal): Promise<Lease>
  stats(): { total: number; idle: number; waiting: number }
}

type Callback<T> = (
  err: Error | null | undefined,
  value?: T,
  release?: (err?: Error | boolean) => void,
) => void

/**
 * A pg.Pool look-alike over the router, for libraries that take a pool: Drizzle
 * (`drizzle(db.primary)`), Kysely (`new PostgresDialect({ pool: db.primary })`).
 * `query` goes through the router (routing, failover waits, retries of what is safe);
 * `connect()` hands out a real pg client from the current primary (role-checked) or a
 * replica, with `release()`. `end()` does not close the router (call `db.close()`): several
 * libraries may share one router, and one of them shutting down must not close it for all.
 * Its name contains "Pool" on purpose: Drizzle recognises pools by constructor name.
 */
export class RouterPool extends EventEmitter {
  readonly role: 'primary' | 'replicas'
  readonly #backend: FacadeBackend
  ending = false
  ended = false

  constructor(role: 'primary' | 'replicas', backend: FacadeBackend) {
    super()
    this.role = role
    this.#backend = backend
    // pg.Pool emits 'error' for idle clients; ours are handled inside the router. Keep a
    // listener so that a user's emit('error') without listeners cannot crash the process.
    this.on('error', () => {})
  }

  get totalCount(): number {
    return this.#backend.stats().total
  }

  get idleCount(): number {
    return this.#backend.stats().idle
  }

  get waitingCount(): number {
    return this.#backend.stats().waiting
  }

  query(
    text: string | QueryConfig,
    values?: unknown[] | Callback<QueryResult>,
    cb?: Callback<QueryResult>,
  ): any {
    const callback = typeof values === 'function' ? values : cb
    const vals = Array.isArray(values) ? values : undefined
    const p = this.#backend.query(text, vals)
    if (!callback) return p
    p.then(
      (r) => callback(null, r),
      (err) => callback(err),
    )
    return undefined
  }

  connect(): Promise<PoolClient>
  connect(cb: Callback<PoolClient>): void
  connect(cb?: Callback<PoolClient>): Promise<PoolClient> | void {
    const p = this.#backend.acquire().then((lease) => {
      const client = lease.client
      client.release = (err?: Error | boolean) =>
        lease.release(err ? (err instanceof Error ? err : true) : undefined)
      return client
    })
    if (!cb) return p
    p.then(
      (client) => cb(null, client, client.release),
      (err) => cb(err),
    )
  }

  /** Resolves at once; the router's pools stay open until `db.close()`. */
  end(cb?: () => void): Promise<void> {
    if (cb) {
      process.nextTick(cb)
      return Promise.resolve()
    }
    return Promise.resolve()
  }
}
