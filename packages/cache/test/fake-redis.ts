import { createServer, type Server, type Socket } from 'node:net'

/**
 * A tiny RESP server on port 0 for protocol edge cases. It answers the connection
 * handshake (INFO, CLIENT, SELECT, SUBSCRIBE) and then behaves per `mode` for data commands:
 * 'hang' never answers (a SIGSTOPped Redis completes handshakes too), 'garbage' answers
 * bytes that are not RESP, 'error' answers a RESP error, 'lookup-only' answers MGET with
 * two nils (an empty cache) and every other data command with a RESP error.
 */
export interface FakeRedis {
  port: number
  /** Data commands received (anything but the handshake and PING), by name. */
  commands: string[]
  /** PINGs received (the cache's own, and its subscriber's heartbeat): answered per `mode`. */
  pings: number
  mode: 'hang' | 'garbage' | 'error' | 'lookup-only'
  close(): Promise<void>
}

const HANDSHAKE = new Set(['INFO', 'CLIENT', 'SELECT', 'SUBSCRIBE', 'QUIT', 'AUTH', 'HELLO', 'READONLY'])

export async function startFakeRedis(mode: FakeRedis['mode']): Promise<FakeRedis> {
  const sockets = new Set<Socket>()
  const fake: FakeRedis = {
    port: 0,
    commands: [],
    pings: 0,
    mode,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let buf = Buffer.alloc(0)
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      for (;;) {
        const parsed = parseCommand(buf)
        if (!parsed) break
        buf = buf.subarray(parsed.used)
        reply(socket, parsed.args, fake)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  fake.port = typeof addr === 'object' && addr ? addr.port : 0
  return fake
}

function reply(socket: Socket, args: string[], fake: FakeRedis): void {
  const name = (args[0] ?? '').toUpperCase()
  if (name === 'INFO') {
    const body = '# Server\r\nredis_version:7.0.0\r\nloading:0\r\n'
    socket.write(`$${Buffer.byteLength(body)}\r\n${body}\r\n`)
    return
  }
  if (name === 'SUBSCRIBE') {
    for (const ch of args.slice(1)) socket.write(`*3\r\n$9\r\nsubscribe\r\n$${ch.length}\r\n${ch}\r\n:1\r\n`)
    return
  }
  if (HANDSHAKE.has(name)) {
    socket.write('+OK\r\n')
    return
  }
  if (name === 'PING') {
    fake.pings++
    if (fake.mode === 'hang') return
    if (fake.mode === 'lookup-only' || fake.mode === 'error') socket.write('-ERR fake failure\r\n')
    else socket.write('?this is not RESP\r\n')
    return
  }
  fake.commands.push(name)
  if (fake.mode === 'lookup-only' && name === 'MGET') socket.write('*2\r\n$-1\r\n$-1\r\n')
  else if (fake.mode === 'lookup-only') socket.write('-ERR fake failure\r\n')
  else if (fake.mode === 'garbage') socket.write('?this is not RESP\r\n')
  else if (fake.mode === 'error') socket.write('-ERR fake failure\r\n')
}

function parseCommand(buf: Buffer): { args: string[]; used: number } | undefined {
  if (buf.length === 0) return undefined
  if (buf[0] !== 0x2a) {
    // inline command
    const nl = buf.indexOf('\r\n')
    if (nl < 0) return undefined
    return { args: buf.subarray(0, nl).toString().split(' '), used: nl + 2 }
  }
  let pos = buf.indexOf('\r\n')
  if (pos < 0) return undefined
  const n = Number(buf.subarray(1, pos).toString())
  pos += 2
  const args: string[] = []
  for (let i = 0; i < n; i++) {
    const nl = buf.indexOf('\r\n', pos)
    if (nl < 0) return undefined
    const len = Number(buf.subarray(pos + 1, nl).toString())
    const start = nl + 2
    if (buf.length < start + len + 2) return undefined
    args.push(buf.subarray(start, start + len).toString())
    pos = start + len + 2
  }
  return { args, used: pos }
}
