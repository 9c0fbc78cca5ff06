/**
 * The lab's HTTP client for Patroni's REST API: node:http or node:https (the global fetch takes
 * no CA without undici's Agent, and the lab has no runtime dependencies), one connection per
 * request, a bound on the whole exchange, the lab's CA and Basic auth when the lab runs TLS.
 * Errors name the method and URL, never the credentials.
 */
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'

export interface ApiClientOptions {
  /** CA certificate (PEM) the server's certificate must chain to (https URLs). */
  ca?: string
  /** Basic auth for the request. */
  auth?: { username: string; password: string }
}

export interface ApiRequest extends ApiClientOptions {
  method?: string
  /** A JSON body (sent with content-type application/json). */
  body?: unknown
  /** Bound on connect + headers + body. Default 2000 ms. */
  timeoutMs?: number
}

export interface ApiResponse {
  status: number
  text: string
  /** The body parsed as JSON (throws when it is not JSON). */
  json<T = unknown>(): T
}

/** One request; resolves with the status and the whole body, rejects on a network error or timeout. */
export function apiRequest(url: string, opts: ApiRequest = {}): Promise<ApiResponse> {
  const method = opts.method ?? 'GET'
  const timeoutMs = opts.timeoutMs ?? 2000
  const u = new URL(url)
  const body = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body))
  const headers: Record<string, string> = { accept: 'application/json' }
  if (body) {
    headers['content-type'] = 'application/json'
    headers['content-length'] = String(body.length)
  }
  if (opts.auth) {
    headers.authorization = `Basic ${Buffer.from(`${opts.auth.username}:${opts.auth.password}`).toString('base64')}`
  }
  const what = `${method} ${u.origin}${u.pathname}`
  return new Promise((resolve, reject) => {
    let settled = false
    const finish = (err: Error | undefined, res?: ApiResponse) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (err) {
        req.destroy()
        reject(err)
      } else resolve(res!)
    }
    const onResponse = (res: import('node:http').IncomingMessage) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.once('error', (e) => finish(new Error(`${what}: ${e.message}`, { cause: e })))
      res.once('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        finish(undefined, {
          status: res.statusCode ?? 0,
          text,
          json<T>() {
            return JSON.parse(text) as T
          },
        })
      })
    }
    const common = { method, headers, agent: false as const }
    const req =
      u.protocol === 'https:'
        ? httpsRequest(u, { ...common, ...(opts.ca ? { ca: opts.ca } : {}) }, onResponse)
        : httpRequest(u, common, onResponse)
    const timer = setTimeout(() => finish(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs)
    req.once('error', (e) => finish(new Error(`${what}: ${e.message}`, { cause: e })))
    req.end(body)
  })
}
