// A small service as a user writes it against the published packages (type-checked only, by
// scripts/check-types.mjs, in a strict project with skipLibCheck: false). Main entries only:
// this file must compile with no optional peer installed.
import { createServer } from 'node:http'
import { createCache } from '@resilient/cache'
import { ResilientError } from '@resilient/core'
import { createHealth } from '@resilient/health'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'

export interface Book {
  id: number
  title: string
}

export const db: PgRouter = createPgRouter({
  patroni: { endpoints: ['http://127.0.0.1:8008'] },
  connection: { user: 'app', database: 'app' },
  pool: { max: 10 },
})
export const cache = createCache({ redis: { host: '127.0.0.1', port: 6379 }, namespace: 'books' })
export const health = createHealth({
  checks: { postgres: { check: db.check, critical: true }, redis: { check: cache.check, critical: false } },
})

export async function getBook(id: number): Promise<Book | undefined> {
  return cache.getOrLoad(`book:${id}`, async () => {
    const { rows } = await db.read<Book>('SELECT id, title FROM books WHERE id = $1', [id])
    return rows[0]
  })
}

export async function renameBook(id: number, title: string): Promise<number | null> {
  try {
    const result = await db.transaction(async (tx) =>
      tx.query('UPDATE books SET title = $1 WHERE id = $2', [title, id]),
    )
    await cache.delete(`book:${id}`)
    return result.rowCount
  } catch (err) {
    if (ResilientError.is(err, 'E_COMMIT_UNKNOWN')) return null
    throw err
  }
}

// pg's types are there, not `any`: the facades are pg.Pool look-alikes whose query() takes
// no number (with pg untyped, this line would compile and the directive would be an error).
// @ts-expect-error a number is not a query
db.primary.query(42)
export const fields: string[] = (await db.write('SELECT 1 AS one')).fields.map((f) => f.name)

const server = createServer((req, res) => {
  if (req.url === '/ready') return health.readiness(req, res)
  if (req.url === '/healthz') return health.liveness(req, res)
  getBook(Number(req.url?.slice(7))).then(
    (book) => res.end(JSON.stringify(book ?? null)),
    () => res.writeHead(503).end(),
  )
})
health.attachServer(server)
server.listen(3000)
