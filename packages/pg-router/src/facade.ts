import { EventEmitter } from 'node:events'
import type {
  PoolClient,
  PoolOptions,
  QueryArrayConfig,
  QueryArrayResult,
  QueryConfig,
  QueryConfigValues,
  QueryResult,
  QueryResultRow,
  Submittable,
} from 'pg'
import pg from 'pg'
import type { Lease } from './member-pool.js'

export interface FacadeBackend {
  query(text: string | QueryConfig, values: unknown[] | undefined): Promise<QueryResult>
  acquire(signal?: AbortSignal): Promise<Lease>
  stats(): { total: number; idle: number; waiting: number }
  /** What `options` shows: pool-shaped settings only (never connection details or a password). */
  options: PoolOptions
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
 * Its name contains "Pool" on purpose: Drizzle recognises pools by constructor name. And
 * `db.primary instanceof pg.Pool` is true (see below): Prisma's `@prisma/adapter-pg` takes
 * anything else for a PoolConfig and opens a pool of its own.
 */
export class RouterPool extends EventEmitter {
  readonly role: 'primary' | 'replicas'
  readonly #backend: FacadeBackend
  ending = false
  ended = false
  /**
   * pg.Pool's `options`, for code typed against pg.Pool: the per-member pool settings
   * (`max`, `idleTimeoutMillis`, ...). Connection details and the password are left out.
   */
  readonly options: PoolOptions

  constructor(role: 'primary' | 'replicas', backend: FacadeBackend) {
    super()
    this.role = role
    this.#backend = backend
    this.options = backend.options
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

  /** pg.Pool counts clients closed for `maxLifetimeSeconds`; the router's pools set none: always 0. */
  get expiredCount(): number {
    return 0
  }

  // The overloads are pg.Pool's own (so that the facade is assignable to pg.Pool, as Drizzle's
  // and Kysely's types require). A Submittable (cursor, stream) is refused: use connect().
  query<T extends Submittable>(queryStream: T): T
  query<R extends any[] = any[], I = any[]>(
    queryConfig: QueryArrayConfig<I>,
    values?: QueryConfigValues<I>,
  ): Promise<QueryArrayResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(queryConfig: QueryConfig<I>): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(
    queryTextOrConfig: string | QueryConfig<I>,
    values?: QueryConfigValues<I>,
  ): Promise<QueryResult<R>>
  query<R extends any[] = any[], I = any[]>(
    queryConfig: QueryArrayConfig<I>,
    callback: (err: Error, result: QueryArrayResult<R>) => void,
  ): void
  query<R extends QueryResultRow = any, I = any[]>(
    queryTextOrConfig: string | QueryConfig<I>,
    callback: (err: Error, result: QueryResult<R>) => void,
  ): void
  query<R extends QueryResultRow = any, I = any[]>(
    queryText: string,
    values: QueryConfigValues<I>,
    callback: (err: Error, result: QueryResult<R>) => void,
  ): void
  query(text: unknown, values?: unknown, cb?: unknown): any {
    const callback = (typeof values === 'function' ? values : cb) as Callback<QueryResult> | undefined
    const vals = Array.isArray(values) ? values : undefined
    const p =
      typeof text === 'object' && text !== null && typeof (text as { submit?: unknown }).submit === 'function'
        ? Promise.reject(
            new TypeError(
              'db.primary/db.replicas.query does not take a Submittable (cursor, stream): use connect()',
            ),
          )
        : this.#backend.query(text as string | QueryConfig, vals)
    if (!callback) return p
    p.then(
      (r) => callback(null, r),
      (err: Error) => callback(err),
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

// pg.Pool.prototype goes between RouterPool.prototype and EventEmitter.prototype, so that
// `instanceof pg.Pool` holds (Prisma's PrismaPg checks it). Every public member of pg.Pool
// is RouterPool's own; the constructor is still EventEmitter's (no pg.Pool state is built).
Object.setPrototypeOf(RouterPool.prototype, pg.Pool.prototype)
