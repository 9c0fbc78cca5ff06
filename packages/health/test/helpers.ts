import type { IncomingMessage, ServerResponse } from 'node:http'
import type { NodeHandler } from '@resilient/health'

export interface Captured {
  statusCode: number
  headers: Record<string, unknown>
  body: string
  json: any
}

/** Calls a node:http handler with minimal fakes: no sockets, so fake timers are safe. */
export function call(handler: NodeHandler, url = '/', method = 'GET'): Captured {
  const out: Captured = { statusCode: 0, headers: {}, body: '', json: undefined }
  const req = { url, method, headers: {} } as IncomingMessage
  const res = {
    writeHead(code: number, headers: Record<string, unknown>) {
      out.statusCode = code
      out.headers = headers
      return this
    },
    end(body?: string) {
      out.body = body ?? ''
      out.json = body ? JSON.parse(body) : undefined
      return this
    },
  } as unknown as ServerResponse
  handler(req, res)
  return out
}

export function deferred<T = void>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}
