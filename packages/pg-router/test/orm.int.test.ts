import { type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'
import { eq, sql } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import { integer, pgTable, serial, text } from 'drizzle-orm/pg-core'
import { type Generated, Kysely, PostgresDialect } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// One 3-node lab: Drizzle and Kysely on the router's pg.Pool-like facades, writes and
// transactions on db.primary, reads on db.replicas.
let lab: Lab
let db: PgRouter

const books = pgTable('orm_books', {
  id: serial('id').primaryKey(),
  title: text('title').notNull(),
  copies: integer('copies').notNull().default(1),
})

interface KyselyDb {
  orm_books: { id: Generated<number>; title: string; copies: Generated<number> }
}

/** Replicas replay asynchronously: poll (bounded) until a read there sees `check`. */
async function eventually<T>(fn: () => Promise<T>, check: (v: T) => boolean): Promise<T> {
  let last: unknown
  for (let i = 0; i < 100; i++) {
    try {
      const v = await fn()
      if (check(v)) return v
      last = v
    } catch (err) {
      last = err // 42P01 while a replica has not replayed the CREATE TABLE yet
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`not seen on a replica: ${String(last)}`)
}

beforeAll(async () => {
  lab = await startLab({ nodes: 3, redis: false })
  await lab.waitForReplicas(2)
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: lab.postgres,
    pool: { max: 4 },
  })
  await db.ready()
  await db.write(
    'CREATE TABLE orm_books (id serial PRIMARY KEY, title text NOT NULL UNIQUE, copies integer NOT NULL DEFAULT 1)',
  )
})

afterAll(async () => {
  await db?.close()
  await lab?.down()
})

describe('Drizzle (drizzle-orm/node-postgres)', () => {
  it('inserts, updates and selects through db.primary', async () => {
    const orm = drizzle(db.primary)
    const [row] = await orm.insert(books).values({ title: 'Dune' }).returning()
    expect(row).toMatchObject({ title: 'Dune', copies: 1 })
    await orm
      .update(books)
      .set({ copies: sql`${books.copies} + 1` })
      .where(eq(books.id, row!.id))
    const found = await orm.select().from(books).where(eq(books.id, row!.id))
    expect(found).toEqual([{ id: row!.id, title: 'Dune', copies: 2 }])
  })

  it('commits a transaction, and rolls one back when it throws', async () => {
    const orm = drizzle(db.primary)
    await orm.transaction(async (tx) => {
      await tx.insert(books).values({ title: 'Emma' })
      await tx.insert(books).values({ title: 'Ulysses' })
    })
    const err = await orm
      .transaction(async (tx) => {
        await tx.insert(books).values({ title: 'Walden' })
        await tx.insert(books).values({ title: 'Emma' }) // unique violation
      })
      .catch((e: unknown) => e)
    expect(
      (err as { cause?: { code?: string }; code?: string }).cause?.code ?? (err as { code?: string }).code,
    ).toBe('23505')
    const titles = await orm.select({ title: books.title }).from(books).orderBy(books.title)
    expect(titles.map((t) => t.title)).toEqual(['Dune', 'Emma', 'Ulysses'])
  })

  it('reads through db.replicas (on a replica)', async () => {
    const reader = drizzle(db.replicas)
    const rows = await eventually(
      () => reader.select().from(books).where(eq(books.title, 'Ulysses')),
      (r) => r.length === 1,
    )
    expect(rows[0]?.title).toBe('Ulysses')
    const inRecovery = await reader.execute(sql`SELECT pg_is_in_recovery() AS r`)
    expect(inRecovery.rows[0]).toEqual({ r: true })
  })
})

describe('Kysely (PostgresDialect)', () => {
  it('runs queries and a transaction through db.primary; destroy() leaves the router open', async () => {
    const k = new Kysely<KyselyDb>({ dialect: new PostgresDialect({ pool: db.primary }) })
    const inserted = await k
      .insertInto('orm_books')
      .values({ title: 'Beloved' })
      .returning(['id', 'title'])
      .executeTakeFirstOrThrow()
    expect(inserted.title).toBe('Beloved')

    await k.transaction().execute(async (trx) => {
      await trx.insertInto('orm_books').values({ title: 'Middlemarch' }).execute()
      await trx
        .updateTable('orm_books')
        .set((eb) => ({ copies: eb('copies', '+', 10) }))
        .where('title', '=', 'Middlemarch')
        .execute()
    })
    const rolledBack = await k
      .transaction()
      .execute(async (trx) => {
        await trx.insertInto('orm_books').values({ title: 'Lolita' }).execute()
        throw new Error('changed my mind')
      })
      .catch((e: unknown) => e)
    expect((rolledBack as Error).message).toBe('changed my mind')

    const rows = await k
      .selectFrom('orm_books')
      .select(['title', 'copies'])
      .where('title', 'in', ['Middlemarch', 'Lolita'])
      .execute()
    expect(rows).toEqual([{ title: 'Middlemarch', copies: 11 }])
    await k.destroy()
    // Kysely ends its pool on destroy(); the facade's end() must not close the router.
    expect((await db.write('SELECT 1 AS one')).rows).toEqual([{ one: 1 }])
  })

  it('reads through db.replicas', async () => {
    const k = new Kysely<KyselyDb>({ dialect: new PostgresDialect({ pool: db.replicas }) })
    const rows = await eventually(
      () => k.selectFrom('orm_books').select('copies').where('title', '=', 'Middlemarch').execute(),
      (r) => r.length === 1,
    )
    expect(rows).toEqual([{ copies: 11 }])
    await k.destroy()
  })
})
