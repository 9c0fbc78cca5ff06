// Type-level test, checked by `npx tsc -p packages/pg-router/test/tsconfig.json` (not run).
// The router's facades must be accepted where Drizzle and Kysely take a pg.Pool, with no cast.
import { drizzle } from 'drizzle-orm/node-postgres'
import { Kysely, PostgresDialect } from 'kysely'
import type pg from 'pg'
import { createPgRouter, type RouterPool } from '../../src/index.js'

const db = createPgRouter({ hosts: [{ host: '127.0.0.1', port: 5432 }], connection: { user: 'u' } })

// Drizzle: positional and { client } forms, on both facades
export const d1 = drizzle(db.primary)
export const d2 = drizzle(db.replicas)
export const d3 = drizzle({ client: db.primary })

// Kysely's PostgresDialect
export const k = new Kysely<{ t: { id: number } }>({ dialect: new PostgresDialect({ pool: db.primary }) })
export const k2 = new Kysely<{ t: { id: number } }>({ dialect: new PostgresDialect({ pool: db.replicas }) })

// Anything typed as a pg.Pool
export const asPool: pg.Pool = db.primary
export const asPool2: pg.Pool = db.replicas
export async function usesPool(pool: pg.Pool): Promise<number> {
  const c = await pool.connect()
  try {
    const r = await c.query<{ n: number }>('SELECT 1 AS n')
    return r.rows[0]?.n ?? 0
  } finally {
    c.release()
  }
}
export const viaFunction: Promise<number> = usesPool(db.replicas)

// The facade keeps its own members typed
export const role: 'primary' | 'replicas' = (db.primary satisfies RouterPool).role
