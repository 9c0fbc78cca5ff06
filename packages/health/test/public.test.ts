import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import * as net from 'node:net'
import { inspect } from 'node:util'
import { createBreaker } from '@resilient/core'
import { type CheckResult, createHealth, type Health, type HealthOptions } from '@resilient/health'
import { healthRoutes } from '@resilient/health/express'
import healthPlugin from '@resilient/health/fastify'
import express from 'express'
import Fastify from 'fastify'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { call } from './helpers.js'

/**
 * "Nothing for outsiders": the public probe routes answer statuses only, whatever the query
 * string or headers say; the details (member names, outputs, breakers) are on the admin
 * listener or behind the operator's token.
 */

const TOKEN = 'a-token-only-the-operator-knows'
const closers: (() => Promise<unknown>)[] = []
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()))
})

async function newHealth(options: HealthOptions = {}): Promise<Health> {
  const health = createHealth({
    eventLoop: false,
    autoStart: false,
    checks: {
      // What db.check() says: a member name in componentId, output and details.
      postgres: async () =>
        ({
          status: 'warn',
          componentId: 'pg-member-7',
          output: 'primary pg-member-7 works; discovery failed 2 time(s) in a row',
          details: { primary: 'pg-member-7' },
        }) as CheckResult,
      redis: { check: async () => false, critical: false },
    },
    ...options,
  })
  await health.refresh()
  return health
}

async function listen(handler: http.RequestListener): Promise<number> {
  const server = http.createServer(handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  closers.push(() => new Promise((r) => server.close(r)))
  return (server.address() as AddressInfo).port
}

/** A raw HTTP/1.1 request: the target and headers go out byte for byte, unnormalized. */
function raw(
  port: number,
  target: string,
  headers: string[] = [],
  method = 'GET',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let data = ''
    socket.setEncoding('latin1')
    socket.on('data', (c) => {
      data += c
    })
    socket.on('error', reject)
    socket.on('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0)
      resolve({ status, body: data.slice(data.indexOf('\r\n\r\n') + 4) })
    })
    socket.write(
      `${method} ${target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`,
    )
  })
}

const junk = 'x'.repeat(6_000)
/** Query strings and headers an outsider may send; none may change a public answer. */
const QUERIES = [
  '?verbose=1',
  '?verbose=true&details=1',
  '?verbose',
  '?verbose=%E0%A4%A', // malformed percent-encoding
  '?%%%&&&==&verbose=1',
  `?a=${junk}&verbose=1`,
  '?verbose[]=1&verbose[x]=2',
  '?%FF%FE=%00&verbose=%31',
  // (raw bytes >= 0x80 in the request target never reach a handler: Node's parser answers 400)
]
const HEADERS = [
  ['authorization: Bearer wrong-token-0123456789'],
  [`authorization: Bearer ${TOKEN}x`],
  [`authorization: Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`],
  ['authorization: Bearer'],
  [`authorization: Bearer ${junk}`],
  ['x-verbose: 1', 'accept: application/json; verbose=1'],
  [`x-junk: ${junk}`],
  ['cookie: verbose=1'],
  ['x-latin1: \u00ff\u00fe'],
]

async function expectSameEverywhere(port: number, paths: string[]) {
  for (const path of paths) {
    const base = await raw(port, path)
    expect(base.status).toBeGreaterThan(0)
    expect(base.body).not.toMatch(/pg-member-7|breakers|details|critical/)
    for (const q of QUERIES) {
      const r = await raw(port, `${path}${q}`)
      expect([path, q.slice(0, 40), r.status, r.body]).toEqual([path, q.slice(0, 40), base.status, base.body])
    }
    for (const h of HEADERS) {
      const r = await raw(port, `${path}?verbose=1`, h)
      expect([path, h[0]?.slice(0, 40), r.status, r.body]).toEqual([
        path,
        h[0]?.slice(0, 40),
        base.status,
        base.body,
      ])
    }
  }
}

describe('public probe routes: the same body whatever the query string and headers', () => {
  it('node:http handlers, default options', async () => {
    const health = await newHealth()
    const port = await listen((req, res) => {
      if (req.url?.startsWith('/healthz')) return health.liveness(req, res)
      if (req.url?.startsWith('/ready')) return health.readiness(req, res)
      res.writeHead(404).end()
    })
    const ready = await raw(port, '/ready')
    expect(JSON.parse(ready.body)).toEqual({
      status: 'warn',
      checks: { postgres: [{ status: 'warn' }], redis: [{ status: 'fail' }] },
    })
    await expectSameEverywhere(port, ['/healthz', '/ready'])
  })

  it('Express 5 routes, with an operator token configured (any other header changes nothing)', async () => {
    const health = await newHealth({ verbose: { token: TOKEN } })
    const app = express()
    app.use(healthRoutes(health))
    const port = await listen(app)
    await expectSameEverywhere(port, ['/healthz', '/ready'])
    // The right token does give the details.
    const verbose = await raw(port, '/ready', [`authorization: Bearer ${TOKEN}`])
    expect(verbose.body).toContain('pg-member-7')
  })

  it('Fastify 5 plugin, default options', async () => {
    const health = await newHealth()
    const app = Fastify()
    await app.register(healthPlugin, { health, closeWithHealth: false })
    await app.listen({ port: 0, host: '127.0.0.1' })
    closers.push(() => app.close())
    await expectSameEverywhere((app.server.address() as AddressInfo).port, ['/healthz', '/ready'])
  })

  it('other methods get 405 with Allow on every probe route and adapter', async () => {
    const health = await newHealth()
    const port = await listen((req, res) => health.readiness(req, res))
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE']) {
      const r = await raw(port, '/ready', [], method)
      expect([method, r.status]).toEqual([method, 405])
    }
    const r = call(health.liveness, '/healthz', 'DELETE')
    expect(r.statusCode).toBe(405)
    expect(r.headers.allow).toBe('GET, HEAD')
  })
})

describe('bad input on probe routes', () => {
  it('never parses the query string or headers, and answers with the very same cached response', async () => {
    const health = await newHealth({ verbose: { token: TOKEN } })
    const base = health.readinessResponse({ url: '/ready', method: 'GET' })
    const parsers = [vi.spyOn(globalThis, 'URLSearchParams'), vi.spyOn(globalThis, 'URL')]
    try {
      const huge = `/ready?${'verbose=1&'.repeat(100_000)}`
      const weird = ['/ready?%', '/ready?verbose=%ZZ', huge, '/ready?\u0000\ud800', '']
      for (const url of weird) {
        for (const authorization of [
          undefined,
          'Bearer x',
          `Bearer ${'y'.repeat(1_000_000)}`,
          'bearer\u0000',
          '',
        ]) {
          expect(health.readinessResponse({ url, authorization, method: 'GET' })).toBe(base)
        }
      }
      for (const p of parsers) expect(p).not.toHaveBeenCalled()
    } finally {
      for (const p of parsers) p.mockRestore()
    }
  })

  it('a request object without headers (a hand-made fake) still gets the cached answer', async () => {
    const health = await newHealth()
    let status = 0
    const res = { writeHead: (c: number) => (status = c), end: () => {} } as unknown as http.ServerResponse
    health.readiness({ url: '/ready', method: 'GET' } as http.IncomingMessage, res)
    expect(status).toBe(200)
  })

  it("the 'query' mode (an explicit opt-in) scans at most 2 KiB of the query string", async () => {
    const health = await newHealth({ verbose: 'query' })
    const isVerbose = (url: string) => health.readinessResponse({ url }).body.includes('pg-member-7')
    expect(isVerbose('/ready?verbose=1')).toBe(true)
    expect(isVerbose('/ready?a=1&verbose')).toBe(true)
    expect(isVerbose('/ready?verbose=0')).toBe(false)
    expect(isVerbose('/ready?verbose=false')).toBe(false)
    expect(isVerbose('/ready?averbose=1')).toBe(false)
    expect(isVerbose(`/ready?a=${'x'.repeat(3_000)}&verbose=1`)).toBe(false)
  })
})

describe('the operator token', () => {
  it('is kept only as a digest: never in inspect, JSON or errors', async () => {
    const health = await newHealth({ verbose: { token: TOKEN } })
    expect(inspect(health, { depth: 10, showHidden: true })).not.toContain(TOKEN)
    expect(JSON.stringify(health.report({ verbose: true }))).not.toContain(TOKEN)
    try {
      createHealth({ verbose: { token: 'hunter2' } })
      expect.unreachable()
    } catch (err) {
      expect((err as Error).message).toMatch(/health\.verbose\.token/)
      expect(inspect(err)).not.toContain('hunter2')
    }
  })

  it('takes a list (rotation): each listed token works', async () => {
    const next = 'the-next-operator-token'
    const health = await newHealth({ verbose: { token: [TOKEN, next] } })
    for (const t of [TOKEN, next]) {
      expect(health.readinessResponse({ authorization: `Bearer ${t}` }).body).toContain('pg-member-7')
    }
    expect(health.readinessResponse({ authorization: `bearer ${next}` }).body).toContain('pg-member-7')
    expect(health.readinessResponse({ authorization: `Bearer ${next} ` }).body).not.toContain('pg-member-7')
  })
})

describe('admin listener', () => {
  it('shows the details, the breakers and the metrics on its own port; 404 and 405 otherwise', async () => {
    const breaker = createBreaker({ name: 'admin-test-breaker' })
    try {
      const health = await newHealth()
      const admin = await health.listenAdmin({ port: 0 })
      closers.push(() => admin.close())
      expect(admin.host).toBe('127.0.0.1')
      const ready = await fetch(`${admin.url}/ready`)
      expect(ready.status).toBe(200)
      const body = (await ready.json()) as any
      expect(body.checks['postgres:responseTime'][0]).toMatchObject({
        componentId: 'pg-member-7',
        critical: true,
        details: { primary: 'pg-member-7' },
      })
      expect(body.breakers).toContainEqual(
        expect.objectContaining({ name: 'admin-test-breaker', state: 'closed' }),
      )
      const live = (await (await fetch(`${admin.url}/healthz`)).json()) as any
      expect(live.status).toBe('pass')
      const breakers = (await (await fetch(`${admin.url}/health/circuit-breakers`)).json()) as any
      expect(breakers.breakers).toContainEqual(expect.objectContaining({ name: 'admin-test-breaker' }))
      const metrics = await fetch(`${admin.url}/metrics`)
      expect(await metrics.text()).toMatch(/^resilient_health_ready 1$/m)
      expect((await fetch(`${admin.url}/nope`)).status).toBe(404)
      const post = await fetch(`${admin.url}/ready`, { method: 'POST' })
      expect([post.status, post.headers.get('allow')]).toEqual([405, 'GET, HEAD'])
      // It stays up during the drain (operators watch it) and closes when shutdown ends.
      const done = health.shutdown({ drainDelayMs: 100 })
      expect(((await (await fetch(`${admin.url}/ready`)).json()) as any).output).toBe('shutting down')
      await done
      await expect(fetch(`${admin.url}/ready`)).rejects.toThrow()
    } finally {
      breaker.shutdown()
    }
  })

  it('can require a token too, and rejects bad options with E_CONFIG naming the field', async () => {
    const health = await newHealth()
    const admin = await health.listenAdmin({ port: 0, token: TOKEN })
    closers.push(() => admin.close())
    expect((await fetch(`${admin.url}/ready`)).status).toBe(401)
    const ok = await fetch(`${admin.url}/ready`, { headers: { authorization: `Bearer ${TOKEN}` } })
    expect(ok.status).toBe(200)
    await expect(health.listenAdmin({ port: -1 })).rejects.toMatchObject({
      code: 'E_CONFIG',
      details: { field: 'admin.port' },
    })
    await expect(health.listenAdmin({ port: 0, token: 'short' })).rejects.toMatchObject({
      details: { field: 'admin.token' },
    })
    await expect(health.listenAdmin({ port: 0, hots: 'x' } as never)).rejects.toMatchObject({
      details: { field: 'admin.hots' },
    })
  })
})
