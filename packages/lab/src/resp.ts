import { connect } from 'node:net'

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

/**
 * Sends one command to a Redis server (or Sentinel) on a fresh connection and resolves its
 * reply; rejects on a connection error or when no whole reply arrives within `timeoutMs`.
 * A `-ERR` reply resolves as a RespError value (it is an answer).
 */
export function redisCommand(
  port: number,
  args: readonly string[],
  { host = '127.0.0.1', timeoutMs = 1000 }: { host?: string; timeoutMs?: number } = {},
): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    let settled = false
    const socket = connect({ host, port })
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
    socket.once('connect', () => socket.write(encodeCommand(args)))
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      try {
        const parsed = parseReply(buf)
        if (parsed) finish(undefined, parsed.value)
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
