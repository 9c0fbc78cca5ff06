import type { AddressInfo } from 'node:net'
import * as net from 'node:net'

/**
 * A tiny PostgreSQL wire-protocol server for protocol edge cases: trust auth, simple query
 * protocol only. `answer(sql)` decides per statement: rows of one text/bool column, hang
 * (never answer), or a FATAL error followed by closing the connection.
 */
export type FakeAnswer =
  | { rows: Array<string | null>; type?: 'bool' | 'text' }
  /** One row of named columns: text, or bool for a boolean. */
  | { row: Record<string, string | boolean | null> }
  | { hang: true }
  /** Closes the socket at once, with no message (a killed server). */
  | { drop: true }
  | { fatal: string }
  | { error: string }

export interface FakeCancel {
  pid: number
  key: number
  /** Whether the connection of that backend was still open when the CancelRequest arrived. */
  connectionOpen: boolean
}

export interface FakePg {
  port: number
  /** CancelRequests received (the fake never answers them, as a frozen server would not). */
  cancels: () => FakeCancel[]
  /** Connections accepted so far / closed so far. */
  accepted: () => number
  closed: () => number
  /** Like a SIGSTOPped server: new connections complete, nothing is answered until thaw(). */
  freeze(): void
  /** Answers what arrived meanwhile, and goes on. */
  thaw(): void
  /** Sends an unsolicited FATAL (e.g. 57P01) to every open connection, then closes them. */
  terminateAll(code: string): void
  close(): Promise<void>
}

function msg(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}

const cstr = (s: string) => Buffer.from(`${s}\0`, 'utf8')

function errorResponse(severity: string, code: string): Buffer {
  return msg(
    'E',
    Buffer.concat([
      Buffer.from('S'),
      cstr(severity),
      Buffer.from('V'),
      cstr(severity),
      Buffer.from('C'),
      cstr(code),
      Buffer.from('M'),
      cstr('fake server says so'),
      Buffer.from([0]),
    ]),
  )
}

const ready = () => msg('Z', Buffer.from('I'))

function rowResponse(row: Record<string, string | boolean | null>): Buffer {
  const names = Object.keys(row)
  const nfields = Buffer.alloc(2)
  nfields.writeInt16BE(names.length)
  const fields = names.map((n) => {
    const meta = Buffer.alloc(18)
    meta.writeInt32BE(typeof row[n] === 'boolean' ? 16 : 25, 6) // bool or text
    meta.writeInt16BE(-1, 10)
    meta.writeInt32BE(-1, 12)
    return Buffer.concat([cstr(n), meta])
  })
  const cells = names.map((n) => {
    const v = row[n] ?? null
    const len = Buffer.alloc(4)
    if (v === null) {
      len.writeInt32BE(-1)
      return len
    }
    const data = Buffer.from(typeof v === 'boolean' ? (v ? 't' : 'f') : v, 'utf8')
    len.writeInt32BE(data.length)
    return Buffer.concat([len, data])
  })
  return Buffer.concat([
    msg('T', Buffer.concat([nfields, ...fields])),
    msg('D', Buffer.concat([nfields, ...cells])),
    msg('C', cstr('SELECT 1')),
    ready(),
  ])
}

function rowsResponse(values: Array<string | null>, type: 'bool' | 'text'): Buffer {
  const field = Buffer.concat([cstr('r'), Buffer.alloc(18)])
  field.writeInt32BE(0, 2) // table oid (after the name's bytes: name is 2 bytes 'r\0')
  field.writeInt16BE(0, 6)
  field.writeInt32BE(type === 'bool' ? 16 : 25, 8)
  field.writeInt16BE(type === 'bool' ? 1 : -1, 12)
  field.writeInt32BE(-1, 14)
  field.writeInt16BE(0, 18)
  const nfields = Buffer.alloc(2)
  nfields.writeInt16BE(1)
  const parts = [msg('T', Buffer.concat([nfields, field]))]
  for (const v of values) {
    const head = Buffer.alloc(6)
    head.writeInt16BE(1, 0)
    if (v === null) {
      head.writeInt32BE(-1, 2)
      parts.push(msg('D', head))
    } else {
      const data = Buffer.from(v, 'utf8')
      head.writeInt32BE(data.length, 2)
      parts.push(msg('D', Buffer.concat([head, data])))
    }
  }
  parts.push(msg('C', cstr(`SELECT ${values.length}`)), ready())
  return Buffer.concat(parts)
}

export async function startFakePg(answer: (sql: string) => FakeAnswer): Promise<FakePg> {
  const sockets = new Set<net.Socket>()
  const cancels: FakeCancel[] = []
  /** Open connections by backend pid, with their secret key. */
  const backends = new Map<number, { key: number; sock: net.Socket }>()
  let accepted = 0
  let closed = 0
  /** SIGSTOP-like: connections still complete (the kernel), nothing is read or answered. */
  let frozen = false
  const stalled = new Set<() => void>()
  const server = net.createServer((sock) => {
    accepted++
    const pid = 1000 + accepted
    const key = (Math.random() * 0x7fffffff) | 0
    sockets.add(sock)
    sock.on('error', () => {})
    sock.on('close', () => {
      closed++
      sockets.delete(sock)
      backends.delete(pid)
    })
    let buf = Buffer.alloc(0)
    let started = false
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      if (frozen)
        stalled.add(drain) // read by the kernel, answered by no one
      else drain()
    })
    const drain = () => {
      for (;;) {
        if (!started) {
          if (buf.length < 8) return
          const len = buf.readInt32BE(0)
          if (buf.length < len) return
          const code = buf.readInt32BE(4)
          if (code === 80877102 && len === 16) {
            const target = buf.readInt32BE(8)
            const b = backends.get(target)
            cancels.push({
              pid: target,
              key: buf.readInt32BE(12),
              connectionOpen: b !== undefined && !b.sock.destroyed && b.key === buf.readInt32BE(12),
            })
            return // never answered, never closed by us
          }
          buf = buf.subarray(len)
          if (code === 80877103) {
            sock.write('N') // no SSL
            continue
          }
          started = true
          const auth = Buffer.alloc(4)
          const keyData = Buffer.alloc(8)
          keyData.writeInt32BE(pid, 0)
          keyData.writeInt32BE(key, 4)
          backends.set(pid, { key, sock })
          sock.write(Buffer.concat([msg('R', auth), msg('K', keyData), ready()]))
          continue
        }
        if (buf.length < 5) return
        const type = String.fromCharCode(buf[0]!)
        const len = buf.readInt32BE(1)
        if (buf.length < len + 1) return
        const body = buf.subarray(5, len + 1)
        buf = buf.subarray(len + 1)
        if (type === 'X') return void sock.end()
        if (type !== 'Q') continue
        const sql = body.subarray(0, body.length - 1).toString('utf8')
        const a = answer(sql)
        if ('hang' in a) continue
        if ('drop' in a) {
          sock.destroy()
          return
        }
        if ('fatal' in a) {
          sock.end(errorResponse('FATAL', a.fatal))
          return
        }
        if ('error' in a) {
          sock.write(Buffer.concat([errorResponse('ERROR', a.error), ready()]))
          continue
        }
        sock.write('row' in a ? rowResponse(a.row) : rowsResponse(a.rows, a.type ?? 'text'))
      }
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: (server.address() as AddressInfo).port,
    cancels: () => [...cancels],
    accepted: () => accepted,
    closed: () => closed,
    freeze() {
      frozen = true
    },
    thaw() {
      frozen = false
      const todo = [...stalled]
      stalled.clear()
      for (const f of todo) f()
    },
    terminateAll(code) {
      for (const s of sockets) s.end(errorResponse('FATAL', code))
    },
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise((r) => server.close(r))
    },
  }
}
