import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'

export type RespValue = string | number | null | RespError | RespValue[]

export class RespError extends Error {
  override name = 'RespError'
}

/** Encodes one command as a RESP array of bulk strings. */
export function encodeCommand(args: readonly string[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)]
  for (const arg of args) {
    const body = Buffer.from(arg)
    parts.push(Buffer.from(`$${body.length}\r\n`), body, Buffer.from('\r\n'))
  }
  return Buffer.concat(parts)
}

/**
 * Parses one RESP2 value at `offset`. Returns undefined when the buffer does not yet hold a
 * whole value, else the value and the offset just after it.
 */
export function parseReply(buf: Buffer, offset = 0): { value: RespValue; next: number } | undefined {
  const lineEnd = buf.indexOf('\r\n', offset)
  if (lineEnd < 0) return undefined
  const type = String.fromCharCode(buf[offset] ?? 0)
  const line = buf.toString('utf8', offset + 1, lineEnd)
  const after = lineEnd + 2
  switch (type) {
    case '+':
      return { value: line, next: after }
    case '-':
      return { value: new RespError(line), next: after }
    case ':':
      return { value: Number(line), next: after }
    case '$': {
      const len = Number(line)
      if (len < 0) return { value: null, next: after }
      if (buf.length < after + len + 2) return undefined
      return { value: buf.toString('utf8', after, after + len), next: after + len + 2 }
    }
    case '*': {
      const count = Number(line)
      if (count < 0) return { value: null, next: after }
      const items: RespValue[] = []
      let next = after
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, next)
        if (!item) return undefined
        items.push(item.value)
        next = item.next
      }
      return { value: items, next }
    }
    default:
      throw new Error(`unexpected RESP type byte ${JSON.stringify(type)}`)
  }
}

/** How the lab reaches a Redis server that runs TLS and ACLs (`startLab({ tls: true })`). */
export interface RedisClientOptions {
  /** TLS with this CA certificate (PEM); plain TCP when absent. */
  tls?: { ca: string; servername?: string }
  /** AUTH <username> <password> before the command. */
  auth?: { username: string; password: string }
}

/** Commands whose arguments carry secrets: shown as `ACL SETUSER app [redacted]` in errors. */
const SECRET_COMMANDS = new Set(['AUTH', 'HELLO', 'ACL', 'MIGRATE'])

/** A command for an error message: never the arguments of AUTH, HELLO, ACL or CONFIG SET. */
export function describeCommand(args: readonly string[]): string {
  const name = (args[0] ?? '').toUpperCase()
  if (SECRET_COMMANDS.has(name)) return `${args.slice(0, 2).join(' ')} [redacted]`
  if (name === 'CONFIG' && (args[1] ?? '').toUpperCase() === 'SET')
    return `${args.slice(0, 3).join(' ')} [redacted]`
  return args.join(' ')
}

/**
 * Sends one command to a Redis server (or Sentinel) on a fresh connection and resolves its
 * reply; rejects on a connection error or when no whole reply arrives within `timeoutMs`.
 * A `-ERR` reply resolves as a RespError value (it is an answer). With `tls` it connects with
 * TLS and verifies the server's certificate against the CA and the host name; with `auth` it
 * sends `AUTH username password` first (pipelined) and rejects when that fails.
 */
export function redisCommand(
  port: number,
  args: readonly string[],
  {
    host = '127.0.0.1',
    timeoutMs = 1000,
    tls,
    auth,
  }: { host?: string; timeoutMs?: number } & RedisClientOptions = {},
): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    let settled = false
    let authed = auth === undefined
    const socket: Socket = tls
      ? tlsConnect({
          host,
          port,
          ca: tls.ca,
          ...(tls.servername ? { servername: tls.servername } : {}),
        })
      : connect({ host, port })
    const finish = (err: Error | undefined, value?: RespValue) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      if (err) reject(err)
      else resolve(value ?? null)
    }
    const timer = setTimeout(
      () => finish(new Error(`no reply from ${host}:${port} to ${args[0]} within ${timeoutMs} ms`)),
      timeoutMs,
    )
    const send = () => {
      const frames = auth
        ? [encodeCommand(['AUTH', auth.username, auth.password]), encodeCommand(args)]
        : [encodeCommand(args)]
      socket.write(Buffer.concat(frames))
    }
    socket.once(tls ? 'secureConnect' : 'connect', send)
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      try {
        for (;;) {
          const parsed = parseReply(buf)
          if (!parsed) return
          buf = buf.subarray(parsed.next)
          if (!authed) {
            if (parsed.value instanceof RespError) {
              finish(
                new Error(`AUTH as ${auth!.username} on ${host}:${port} failed: ${parsed.value.message}`),
              )
              return
            }
            authed = true
            continue
          }
          finish(undefined, parsed.value)
          return
        }
      } catch (err) {
        finish(err as Error)
      }
    })
    socket.once('error', (err) => finish(err))
    socket.once('close', () => finish(new Error(`connection to ${host}:${port} closed before a reply`)))
  })
}

/** Parses the text of INFO into a map of field -> value. */
export function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of text.split(/\r?\n/)) {
    if (!line || line.startsWith('#')) continue
    const i = line.indexOf(':')
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}
