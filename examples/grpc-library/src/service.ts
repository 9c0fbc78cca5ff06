// The Library gRPC service: the handlers map requests to library.ts and errors to gRPC
// status codes (SDK errors by `code`, never by message).
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import type { PgRouter } from '@resilient/pg-router'
import {
  type Book,
  createLibrary,
  type Db,
  type Library,
  type LibraryCache,
  LibraryError,
  type Loan,
  parseBookId,
} from './library.js'

/** The metadata key that carries a read-your-writes token, both ways. */
export const RYW_KEY = 'x-ryw-token'

const PROTO = fileURLToPath(new URL('../proto/library.proto', import.meta.url))
const definition = loadSync(PROTO, { keepCase: false, longs: Number, enums: String, defaults: true })
/** `library.v1.Library`, for servers and clients alike. */
export const LibraryService = (
  grpc.loadPackageDefinition(definition) as unknown as {
    library: { v1: { Library: grpc.ServiceClientConstructor } }
  }
).library.v1.Library

interface LoanMessage {
  id: string
  bookId: number
  member: string
  loanedAt: string
  returnedAt: string
}

const iso = (d: Date | string | null): string =>
  d === null ? '' : d instanceof Date ? d.toISOString() : String(d)
const toLoan = (l: Loan): LoanMessage => ({
  id: l.id,
  bookId: l.bookId,
  member: l.member,
  loanedAt: iso(l.loanedAt),
  returnedAt: iso(l.returnedAt),
})

/** A gRPC status for any error: the catalog's own, SDK errors by `code`, a few SQLSTATEs. */
export function toGrpcError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof LibraryError) {
    const code =
      err.kind === 'BAD_REQUEST'
        ? grpc.status.INVALID_ARGUMENT
        : err.kind === 'NOT_FOUND'
          ? grpc.status.NOT_FOUND
          : grpc.status.FAILED_PRECONDITION
    return { code, details: `${err.kind}: ${err.message}` }
  }
  const e = err as { code?: unknown; cause?: unknown; message?: string }
  // The cache wraps a loader's failure in E_LOADER: answer for what the loader hit.
  if (e?.code === 'E_LOADER' && e.cause) return toGrpcError(e.cause)
  switch (e?.code) {
    case 'E_NO_PRIMARY':
    case 'E_FAILOVER_TIMEOUT':
    case 'E_CIRCUIT_OPEN':
    case 'E_TIMEOUT':
    case 'E_LIMIT':
    case 'E_DISCOVERY':
    case 'E_CACHE_UNAVAILABLE':
    case 'E_SHUTTING_DOWN':
      return { code: grpc.status.UNAVAILABLE, details: `${e.code}: ${e.message ?? ''}` }
    case 'E_COMMIT_UNKNOWN':
      // The connection died after COMMIT was sent: retry with the same loan id.
      return {
        code: grpc.status.UNAVAILABLE,
        details: 'E_COMMIT_UNKNOWN: outcome unknown: retry with the same id',
      }
    case '40001': // serialization_failure
    case '40P01': // deadlock_detected
      return { code: grpc.status.ABORTED, details: `${e.code}: conflict: retry` }
    case '23503': // foreign_key_violation
      return { code: grpc.status.NOT_FOUND, details: 'NOT_FOUND: no such book' }
    case '22P02': // invalid_text_representation
      return { code: grpc.status.INVALID_ARGUMENT, details: 'BAD_REQUEST: malformed value' }
    default:
      return { code: grpc.status.INTERNAL, details: 'internal error' }
  }
}

/** What the handlers read of any call: its metadata, and its response metadata to send. */
type AnyCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'sendMetadata'>

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => void

/**
 * The handlers. Reads take the session of the caller's token when it sent one (it wrote
 * recently and must see that write), else go through the cache; writes run in a session and
 * answer with its new token in the response metadata.
 */
export function libraryHandlers({
  db,
  cache,
}: {
  db: PgRouter
  cache: LibraryCache
}): grpc.UntypedServiceImplementation {
  const library: Library = createLibrary({ db: db as unknown as Db, cache })
  const tokenOf = (call: AnyCall) => {
    const v = call.metadata.get(RYW_KEY)[0]
    return typeof v === 'string' && v !== '' ? v : undefined
  }
  /** The session for a read: only when the client sent a token. */
  const sessionOf = (call: AnyCall): Db | undefined => {
    const token = tokenOf(call)
    return token ? (db.session(token) as unknown as Db) : undefined
  }
  const unary =
    <Req, Res>(fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>): Unary<Req, Res> =>
    (call, callback) => {
      // Promise.resolve().then: a synchronous throw (a bad argument) is answered like any error.
      Promise.resolve()
        .then(() => fn(call))
        .then(
          (res) => callback(null, res),
          (err: unknown) => {
            const status = toGrpcError(err)
            if (status.code === grpc.status.INTERNAL) console.error(`${call.getPath()} failed:`, err)
            callback(status)
          },
        )
    }
  /** Runs a write in the caller's session, then sends the session's new token as metadata. */
  const writing = async <T>(call: AnyCall, fn: (session: Db) => Promise<T>): Promise<T> => {
    const session = db.session(tokenOf(call))
    const result = await fn(session as unknown as Db)
    const md = new grpc.Metadata()
    md.set(RYW_KEY, session.token)
    call.sendMetadata(md)
    return result
  }

  const getBook: Unary<{ id: number }, Book> = unary((call) =>
    library.getBook(parseBookId(call.request.id), sessionOf(call)),
  )
  const listBooks: Unary<{ author: string }, { books: Book[] }> = unary(async (call) => ({
    books: await library.findBooks(call.request.author, sessionOf(call)),
  }))
  const getLoan: Unary<{ id: string }, LoanMessage> = unary(async (call) =>
    toLoan(await library.getLoan(call.request.id, sessionOf(call))),
  )
  const lend: Unary<{ id: string; bookId: number; member: string }, { loan: LoanMessage; created: boolean }> =
    unary((call) =>
      writing(call, async (session) => {
        const { loan, created } = await library.lend(session, call.request)
        return { loan: toLoan(loan), created }
      }),
    )
  const giveBack: Unary<{ id: string }, LoanMessage> = unary((call) =>
    writing(call, async (session) => toLoan((await library.giveBack(session, call.request.id)).loan)),
  )
  return { GetBook: getBook, ListBooks: listBooks, GetLoan: getLoan, Lend: lend, Return: giveBack }
}
