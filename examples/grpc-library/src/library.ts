// The catalog's data access, framework-free: the same logic as the HTTP examples'
// library.js, typed. Reads go through the cache and to a replica; loans are transactions on
// the primary followed by cache invalidation.
import type { Cache } from '@resilient/cache'

export interface Book {
  id: number
  title: string
  author: string
  year: number
  copies: number
  available: number
}

export interface Loan {
  id: string
  bookId: number
  member: string
  loanedAt: Date | string
  returnedAt: Date | string | null
}

interface Rows<T> {
  rows: T[]
  rowCount: number | null
}

/** What the library needs of `db` (a PgRouter) or of `db.session(token)` (a read-your-writes session). */
export interface Db {
  read(text: string, values?: unknown[]): Promise<Rows<any>>
  transaction<T>(
    fn: (tx: { query(text: string, values?: unknown[]): Promise<Rows<any>> }) => Promise<T>,
    options?: { retry?: boolean },
  ): Promise<T>
}

export type LibraryCache = Pick<Cache, 'getOrLoad' | 'delete' | 'deleteByTag'>

/** An error the transport maps to a status (HTTP 400/404/409, gRPC INVALID_ARGUMENT/NOT_FOUND/FAILED_PRECONDITION). */
export class LibraryError extends Error {
  constructor(
    readonly kind: 'BAD_REQUEST' | 'NOT_FOUND' | 'NOT_AVAILABLE',
    message: string,
  ) {
    super(message)
  }
}

const BOOK_COLUMNS = 'id, title, author, year, copies, available'
const LOAN_COLUMNS = 'id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"'
/**
 * Loans and returns are keyed by a UUID the client chose and written with ON CONFLICT /
 * WHERE returned_at IS NULL, so running one again is harmless: if its connection dies before
 * COMMIT is sent (a failover), the router may run it again on the new primary.
 */
const RETRY_TX = Object.freeze({ retry: true })
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function parseBookId(value: unknown): number {
  const id = Number(value)
  if (!Number.isSafeInteger(id) || id <= 0 || id > 2_147_483_647) {
    throw new LibraryError('BAD_REQUEST', 'book id must be a positive integer')
  }
  return id
}

function parseLoanId(value: unknown, what = 'loan id'): string {
  const id = String(value ?? '')
  if (!UUID.test(id)) throw new LibraryError('BAD_REQUEST', `${what} must be a UUID`)
  return id
}

export interface Library {
  getBook(id: number, session?: Db): Promise<Book>
  findBooks(author: unknown, session?: Db): Promise<Book[]>
  getLoan(loanId: unknown, session?: Db): Promise<Loan>
  lend(
    session: Db,
    input: { id: unknown; bookId: unknown; member: unknown },
  ): Promise<{ loan: Loan; created: boolean }>
  giveBack(session: Db, loanId: unknown): Promise<{ loan: Loan; returned: boolean }>
}

export function createLibrary({
  db,
  cache,
  bookTtlMs,
}: {
  db: Db
  cache: LibraryCache
  bookTtlMs?: number
}): Library {
  const bookKey = (id: number) => `book:${id}`
  const authorKey = (author: string) => `author:${author.toLowerCase()}`
  const authorTag = (author: string) => `author:${author.toLowerCase()}`
  const ttl = bookTtlMs === undefined ? {} : { ttlMs: bookTtlMs }

  async function loadBook(reader: Db, id: number): Promise<Book | null> {
    const { rows } = await reader.read(`SELECT ${BOOK_COLUMNS} FROM books WHERE id = $1`, [id])
    return (rows[0] as Book | undefined) ?? null
  }

  async function loadByAuthor(reader: Db, author: string): Promise<Book[]> {
    const { rows } = await reader.read(
      `SELECT ${BOOK_COLUMNS} FROM books WHERE lower(author) = lower($1) ORDER BY id LIMIT 100`,
      [author],
    )
    return rows as Book[]
  }

  /** After a committed change: drop the book's entry and every cached list of its author (bounded; a failure is not the write's). */
  async function invalidate(bookId: number, author: string): Promise<void> {
    await Promise.allSettled([cache.delete(bookKey(bookId)), cache.deleteByTag(authorTag(author))])
  }

  return {
    /**
     * Without a session: cache first (fresh, else stale within grace while a reload runs),
     * loaded from a replica. With one (the client sent a read-your-writes token): straight to
     * a member that has replayed the client's last write; the cache is skipped.
     */
    async getBook(id, session) {
      const book = session
        ? await loadBook(session, id)
        : await cache.getOrLoad(bookKey(id), () => loadBook(db, id), ttl)
      if (!book) throw new LibraryError('NOT_FOUND', 'no such book')
      return book
    },

    async findBooks(author, session) {
      if (typeof author !== 'string' || author.length === 0 || author.length > 200) {
        throw new LibraryError('BAD_REQUEST', 'author must be a non-empty string of at most 200 characters')
      }
      if (session) return loadByAuthor(session, author)
      return cache.getOrLoad(authorKey(author), () => loadByAuthor(db, author), {
        ...ttl,
        tags: [authorTag(author)],
      })
    },

    async getLoan(loanId, session) {
      const id = parseLoanId(loanId)
      const { rows } = await (session ?? db).read(`SELECT ${LOAN_COLUMNS} FROM loans WHERE id = $1`, [id])
      if (!rows[0]) throw new LibraryError('NOT_FOUND', 'no such loan')
      return rows[0] as Loan
    },

    async lend(session, input) {
      const id = parseLoanId(input?.id, 'id')
      const bookId = parseBookId(input.bookId)
      const member = input.member
      if (typeof member !== 'string' || member.length === 0 || member.length > 100) {
        throw new LibraryError('BAD_REQUEST', 'member must be a non-empty string of at most 100 characters')
      }
      const result = await session.transaction(async (tx) => {
        const inserted = await tx.query(
          `INSERT INTO loans (id, book_id, member) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING ${LOAN_COLUMNS}`,
          [id, bookId, member],
        )
        if (inserted.rowCount === 0) {
          const existing = await tx.query(`SELECT ${LOAN_COLUMNS} FROM loans WHERE id = $1`, [id])
          return { loan: existing.rows[0] as Loan, created: false, author: null }
        }
        const book = await tx.query(
          'UPDATE books SET available = available - 1 WHERE id = $1 AND available > 0 RETURNING author',
          [bookId],
        )
        if (book.rowCount === 0) {
          // Throwing rolls the transaction back, loan row included.
          const exists = await tx.query('SELECT 1 FROM books WHERE id = $1', [bookId])
          if (exists.rowCount === 0) throw new LibraryError('NOT_FOUND', 'no such book')
          throw new LibraryError('NOT_AVAILABLE', 'every copy of this book is on loan')
        }
        return { loan: inserted.rows[0] as Loan, created: true, author: book.rows[0].author as string }
      }, RETRY_TX)
      if (result.created && result.author !== null) await invalidate(bookId, result.author)
      return { loan: result.loan, created: result.created }
    },

    async giveBack(session, loanId) {
      const id = parseLoanId(loanId)
      const result = await session.transaction(async (tx) => {
        const loan = await tx.query(
          `UPDATE loans SET returned_at = now() WHERE id = $1 AND returned_at IS NULL RETURNING ${LOAN_COLUMNS}`,
          [id],
        )
        if (loan.rowCount === 0) {
          const existing = await tx.query(`SELECT ${LOAN_COLUMNS} FROM loans WHERE id = $1`, [id])
          if (!existing.rows[0]) throw new LibraryError('NOT_FOUND', 'no such loan')
          return { loan: existing.rows[0] as Loan, returned: false, author: null }
        }
        const returned = loan.rows[0] as Loan
        const book = await tx.query(
          'UPDATE books SET available = available + 1 WHERE id = $1 RETURNING author',
          [returned.bookId],
        )
        return { loan: returned, returned: true, author: book.rows[0].author as string }
      }, RETRY_TX)
      if (result.returned && result.author !== null) await invalidate(result.loan.bookId, result.author)
      return { loan: result.loan, returned: result.returned }
    },
  }
}
