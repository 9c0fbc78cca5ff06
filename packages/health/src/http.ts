import type { IncomingMessage, ServerResponse } from 'node:http'

/** What an adapter writes: status code, headers and the serialized body. */
export interface ProbeResponse {
  statusCode: number
  headers: Record<string, string | number>
  body: string
}

export const HEALTH_JSON = 'application/health+json'
/** The methods a probe route answers; any other gets 405 with this as `Allow`. */
export const PROBE_METHODS = 'GET, HEAD'

export function jsonResponse(statusCode: number, value: unknown, contentType = HEALTH_JSON): ProbeResponse {
  const body = JSON.stringify(value)
  return {
    statusCode,
    body,
    headers: {
      'content-type': contentType,
      'cache-control': 'no-store',
      'content-length': Buffer.byteLength(body),
    },
  }
}

/** 405 for a probe route asked with another method than GET or HEAD. */
export const METHOD_NOT_ALLOWED: ProbeResponse = (() => {
  const r = jsonResponse(405, { status: 'fail', output: 'method not allowed' })
  r.headers.allow = PROBE_METHODS
  return r
})()

export function isProbeMethod(method: string | undefined): boolean {
  return method === 'GET' || method === 'HEAD'
}

export function writeResponse(req: IncomingMessage, res: ServerResponse, r: ProbeResponse): void {
  res.writeHead(r.statusCode, r.headers)
  res.end(req.method === 'HEAD' ? undefined : r.body)
}
