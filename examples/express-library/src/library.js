// The catalog's data access: framework-free, so that the Express and Fastify examples share
// it line for line. Reads go through the cache and to a replica; loans are transactions on
// the primary followed by cache invalidation.

/**
 * @typedef {{ id: number, title: string, author: string, year: number, copies: number, available: number }} Book
 * @typedef {{ id: string, bookId: number, member: string, loanedAt: string, returnedAt: string | null }} Loan
 * @typedef {{ read: (text: string, values?: unknown[]) => Promise<{ rows: any[], rowCount: number | null }>,
 *             transaction: <T>(fn: (tx: { query: (text: string, values?: unknown[]) => Promise<{ rows: any[], rowCount: number | null }> }) => Promise<T>) => Promise<T> }} Db
 *   What the library needs of `db` (a PgRouter) or of `db.session(token)` (a read-your-writes session).
 */

/** An error the HTTP layer maps to a status code (404, 409, 400). */
export class HttpError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

const BOOK_COLUMNS = 'id, title, author, year, copies, available'
/**
 * Loans and returns are keyed by a UUID the client chose and written with ON CONFLICT / WHERE
 * returned_at IS NULL, so running one again is harmless: if its connection dies before COMMIT
 * is sent (a failover), the router may run it again on the new primary.
 */
const RETRY_TX = Object.freeze({ retry: true })
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** @param {unknown} value @returns {number} */
export function parseBookId(value) {
  const id = Number(value)
  if (!Number.isSafeInteger(id) || id <= 0 || id > 2_147_483_647) {
    throw new HttpError(400, 'BAD_REQUEST', 'book id must be a positive integer')
  }
  return id
}

/**
 * @param {{ db: Db & { session: (token?: string) => Db & { token: string } },
 *           cache: { getOrLoad: Function, delete: (key: string) => Promise<unknown>, deleteByTag: (tag: string) => Promise<unknown> },
 *           bookTtlMs?: number }} deps
 */
export function createLibrary({ db, cache, bookTtlMs }) {
  const bookKey = (/** @type {number} */ id) => `book:${id}`
  const authorKey = (/** @type {string} */ author) => `author:${author.toLowerCase()}`
  const authorTag = (/** @type {string} */ author) => `author:${author.toLowerCase()}`

  /** @param {Db} reader @param {number} id @returns {Promise<Book | null>} */
  async function loadBook(reader, id) {
    const { rows } = await reader.read(`SELECT ${BOOK_COLUMNS} FROM books WHERE id = $1`, [id])
    return rows[0] ?? null
  }

  /** @param {Db} reader @param {string} author @returns {Promise<Book[]>} */
  async function loadByAuthor(reader, author) {
    const { rows } = await reader.read(
      `SELECT ${BOOK_COLUMNS} FROM books WHERE lower(author) = lower($1) ORDER BY id LIMIT 100`,
      [author],
    )
    return rows
  }

  return {
    /**
     * One book. Without a session: cache first (fresh, else stale within grace while a reload
     * runs), loaded from a replica. With a session (the client sent a read-your-writes token):
     * straight to a member that has replayed the client's last write; the cache is skipped,
     * since a value filled by another client from a lagging replica could predate that write.
     * @param {number} id @param {Db} [session]
     */
    async getBook(id, session) {
      const book = session
        ? await loadBook(session, id)
        : await cache.getOrLoad(bookKey(id), () => loadBook(db, id), { ttlMs: bookTtlMs })
      if (!book) throw new HttpError(404, 'NOT_FOUND', 'no such book')
      return /** @type {Book} */ (book)
    },

    /** Books by one author (case-insensitive), cached under a tag that loans invalidate. @param {string} author @param {Db} [session] */
    async findBooks(author, session) {
      if (typeof author !== 'string' || author.length === 0 || author.length > 200) {
        throw new HttpError(400, 'BAD_REQUEST', 'author must be a non-empty string of at most 200 characters')
      }
      if (session) return loadByAuthor(session, author)
      return /** @type {Promise<Book[]>} */ (
        cache.getOrLoad(authorKey(author), () => loadByAuthor(db, author), {
          ttlMs: bookTtlMs,
          tags: [authorTag(author)],
        })
      )
    },

    /**
     * One loan. Loans are not cached. With a session, the read goes to a member that has
     * replayed the client's last write, so a client always sees the loan it just made.
     * @param {unknown} loanId @param {Db} [session] @returns {Promise<Loan>}
     */
    async getLoan(loanId, session) {
      const id = String(loanId ?? '')
      if (!UUID.test(id)) throw new HttpError(400, 'BAD_REQUEST', 'loan id must be a UUID')
      const { rows } = await (session ?? db).read(
        `SELECT id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"
         FROM loans WHERE id = $1`,
        [id],
      )
      if (!rows[0]) throw new HttpError(404, 'NOT_FOUND', 'no such loan')
      return rows[0]
    },

    /**
     * Lends a book: one transaction on the primary. The loan id comes from the client, so a
     * retry after an unknown outcome returns the loan it already made (created: false).
     * @param {Db} session @param {{ id: unknown, bookId: unknown, member: unknown }} input
     * @returns {Promise<{ loan: Loan, created: boolean }>}
     */
    async lend(session, input) {
      const id = String(input?.id ?? '')
      if (!UUID.test(id)) throw new HttpError(400, 'BAD_REQUEST', 'id must be a UUID chosen by the client')
      const bookId = parseBookId(input.bookId)
      const member = input.member
      if (typeof member !== 'string' || member.length === 0 || member.length > 100) {
        throw new HttpError(400, 'BAD_REQUEST', 'member must be a non-empty string of at most 100 characters')
      }
      const result = await session.transaction(async (tx) => {
        const inserted = await tx.query(
          `INSERT INTO loans (id, book_id, member) VALUES ($1, $2, $3)
           ON CONFLICT (id) DO NOTHING
           RETURNING id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"`,
          [id, bookId, member],
        )
        if (inserted.rowCount === 0) {
          const existing = await tx.query(
            `SELECT id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"
             FROM loans WHERE id = $1`,
            [id],
          )
          return { loan: existing.rows[0], created: false, author: null }
        }
        const book = await tx.query(
          'UPDATE books SET available = available - 1 WHERE id = $1 AND available > 0 RETURNING author',
          [bookId],
        )
        if (book.rowCount === 0) {
          // Throwing rolls the transaction back, loan row included.
          const exists = await tx.query('SELECT 1 FROM books WHERE id = $1', [bookId])
          if (exists.rowCount === 0) throw new HttpError(404, 'NOT_FOUND', 'no such book')
          throw new HttpError(409, 'NOT_AVAILABLE', 'every copy of this book is on loan')
        }
        return { loan: inserted.rows[0], created: true, author: book.rows[0].author }
      }, RETRY_TX)
      if (result.created) await invalidate(bookId, result.author)
      return { loan: result.loan, created: result.created }
    },

    /**
     * Returns a loan (idempotent: returning it twice changes nothing the second time).
     * @param {Db} session @param {unknown} loanId @returns {Promise<{ loan: Loan, returned: boolean }>}
     */
    async giveBack(session, loanId) {
      const id = String(loanId ?? '')
      if (!UUID.test(id)) throw new HttpError(400, 'BAD_REQUEST', 'loan id must be a UUID')
      const result = await session.transaction(async (tx) => {
        const loan = await tx.query(
          `UPDATE loans SET returned_at = now() WHERE id = $1 AND returned_at IS NULL
           RETURNING id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"`,
          [id],
        )
        if (loan.rowCount === 0) {
          const existing = await tx.query(
            `SELECT id, book_id AS "bookId", member, loaned_at AS "loanedAt", returned_at AS "returnedAt"
             FROM loans WHERE id = $1`,
            [id],
          )
          if (existing.rowCount === 0) throw new HttpError(404, 'NOT_FOUND', 'no such loan')
          return { loan: existing.rows[0], returned: false, author: null }
        }
        const book = await tx.query(
          'UPDATE books SET available = available + 1 WHERE id = $1 RETURNING author',
          [loan.rows[0].bookId],
        )
        return { loan: loan.rows[0], returned: true, author: book.rows[0].author }
      }, RETRY_TX)
      if (result.returned) await invalidate(result.loan.bookId, result.author)
      return { loan: result.loan, returned: result.returned }
    },
  }

  /**
   * After a committed change: drop the book's entry and every cached list of its author.
   * Bounded by the cache's Redis timeout; a failure here is not the write's failure (the
   * write is committed), so it is swallowed: the entries expire after their TTL anyway.
   * @param {number} bookId @param {string} author
   */
  async function invalidate(bookId, author) {
    await Promise.allSettled([cache.delete(bookKey(bookId)), cache.deleteByTag(authorTag(author))])
  }
}

/**
 * HTTP status and body for any error: SDK errors by `code` (never by message), the catalog's
 * own HttpErrors, and a few SQLSTATEs.
 * @param {any} err @returns {{ status: number, body: { error: string, message: string }, retryAfter?: number }}
 */
export function toHttpError(err) {
  if (err instanceof HttpError) return { status: err.status, body: { error: err.code, message: err.message } }
  // The cache wraps a loader's failure in E_LOADER: answer for what the loader hit.
  if (err?.code === 'E_LOADER' && err.cause) return toHttpError(err.cause)
  switch (err?.code) {
    case 'E_NO_PRIMARY':
    case 'E_FAILOVER_TIMEOUT':
    case 'E_CIRCUIT_OPEN':
    case 'E_TIMEOUT':
    case 'E_LIMIT':
    case 'E_DISCOVERY':
    case 'E_CACHE_UNAVAILABLE':
    case 'E_SHUTTING_DOWN':
      return { status: 503, body: { error: err.code, message: err.message }, retryAfter: 1 }
    case 'E_COMMIT_UNKNOWN':
      // The connection died after COMMIT was sent: the loan may or may not exist. The
      // client retries with the same loan id and gets the loan if it was made.
      return {
        status: 503,
        body: { error: err.code, message: 'outcome unknown: retry with the same id' },
        retryAfter: 1,
      }
    case 'E_CONFLICT':
    case 'E_SERIALIZE':
    case '40001': // serialization_failure
    case '40P01': // deadlock_detected
      return { status: 409, body: { error: err.code, message: 'conflict: retry' }, retryAfter: 0 }
    case '23503': // foreign_key_violation: a loan of a book that does not exist
      return { status: 404, body: { error: 'NOT_FOUND', message: 'no such book' } }
    case '22P02': // invalid_text_representation
      return { status: 400, body: { error: 'BAD_REQUEST', message: 'malformed value' } }
    default:
      return {
        status: 500,
        body: { error: typeof err?.code === 'string' ? err.code : 'INTERNAL', message: 'internal error' },
      }
  }
}
