import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { createHealth, type Health } from '@resilient/health'
import { healthRoutes } from '@resilient/health/express'
import healthPlugin from '@resilient/health/fastify'
import express from 'express'
// @ts-expect-error express4 is an alias of express@4 without its own types
import express4 from 'express4'
import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'

const servers: http.Server[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))))
})

async function serve(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler)
  servers.push(server)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

const TOKEN = 'operator-token-0123456789'
const BEARER = { authorization: `Bearer ${TOKEN}` }

async function healthWith(db: () => boolean): Promise<Health> {
  const health = createHealth({
    eventLoop: false,
    autoStart: false,
    intervalMs: 10,
    verbose: { token: TOKEN },
    checks: { db: async () => db() },
  })
  await health.refresh()
  return health
}

async function expectProbes(url: string, health: Health, paths = { live: '/healthz', ready: '/ready' }) {
  const live = await fetch(url + paths.live)
  expect(live.status).toBe(200)
  expect(live.headers.get('content-type')).toBe('application/health+json')
  expect(await live.json()).toEqual({ status: 'pass' })
  const ready = await fetch(url + paths.ready)
  expect(ready.status).toBe(200)
  const body = (await ready.json()) as any
  expect(body).toEqual({ status: 'pass', checks: { db: [{ status: 'pass' }] } })
  // ?verbose=1 alone changes nothing; the operator's token gives the verbose view.
  expect(await (await fetch(`${url}${paths.ready}?verbose=1`)).json()).toEqual(body)
  const wrong = { authorization: `Bearer ${TOKEN.slice(0, -1)}x` }
  expect(await (await fetch(url + paths.ready, { headers: wrong })).json()).toEqual(body)
  const verbose = (await (await fetch(url + paths.ready, { headers: BEARER })).json()) as any
  expect(verbose.breakers).toEqual(expect.any(Array))
  expect(verbose.checks['db:responseTime'][0]).toMatchObject({ componentId: 'db', critical: true })
  const head = await fetch(url + paths.ready, { method: 'HEAD' })
  expect(head.status).toBe(200)
  expect(await head.text()).toBe('')
  for (const path of [paths.ready, paths.live]) {
    const post = await fetch(url + path, { method: 'POST', body: '{}' })
    expect(post.status).toBe(405)
    expect(post.headers.get('allow')).toBe('GET, HEAD')
  }
  void health.shutdown({ drainDelayMs: 0 })
  expect((await fetch(url + paths.ready)).status).toBe(503)
  expect((await fetch(url + paths.live)).status).toBe(200)
}

describe('node:http handlers', () => {
  it('serve liveness and readiness', async () => {
    const health = await healthWith(() => true)
    const url = await serve((req, res) => {
      if (req.url?.startsWith('/healthz')) health.liveness(req, res)
      else if (req.url?.startsWith('/ready')) health.readiness(req, res)
      else res.writeHead(404).end()
    })
    await expectProbes(url, health)
  })
})

describe('express adapter', () => {
  it('Express 5: healthRoutes() is a Router with /healthz and /ready', async () => {
    const health = await healthWith(() => true)
    const app = express()
    app.use(healthRoutes(health))
    app.get('/', (_req, res) => {
      res.send('app')
    })
    const url = await serve(app)
    expect(await (await fetch(url)).text()).toBe('app')
    await expectProbes(url, health)
  })

  it('Express 5: custom paths, mounted under a prefix, 503 on a failing check', async () => {
    const health = await healthWith(() => false)
    const app = express()
    app.use('/ops', healthRoutes(health, { livenessPath: '/live', readinessPath: '/readyz' }))
    const url = await serve(app)
    expect((await fetch(`${url}/ops/live`)).status).toBe(200)
    const ready = await fetch(`${url}/ops/readyz`)
    expect(ready.status).toBe(503)
    expect(((await ready.json()) as any).status).toBe('fail')
    expect((await fetch(`${url}/ready`)).status).toBe(404)
  })

  it('Express 4: with its own Router', async () => {
    const health = await healthWith(() => true)
    const app = express4()
    const router = healthRoutes(health, { router: express4.Router() })
    app.use(router)
    const url = await serve(app)
    await expectProbes(url, health)
  })

  it('Express 4: with the default Router', async () => {
    const health = await healthWith(() => true)
    const app = express4()
    app.use(healthRoutes(health))
    const url = await serve(app)
    await expectProbes(url, health)
  })

  it('rejects bad options with E_CONFIG', async () => {
    const health = await healthWith(() => true)
    expect(() => healthRoutes(health, { readinessPath: 'ready' })).toThrowError(/readinessPath/)
    expect(() => healthRoutes({} as Health)).toThrowError(expect.objectContaining({ code: 'E_CONFIG' }))
  })
})

describe('fastify plugin', () => {
  it('registers /healthz and /ready (inject)', async () => {
    const health = await healthWith(() => true)
    const app = Fastify()
    await app.register(healthPlugin, { health, closeWithHealth: false })
    await app.ready()
    const live = await app.inject('/healthz')
    expect(live.statusCode).toBe(200)
    expect(live.headers['content-type']).toMatch(/^application\/health\+json/) // fastify adds a charset
    expect(live.json()).toEqual({ status: 'pass' })
    expect((await app.inject('/ready?verbose=1')).json()).toEqual({
      status: 'pass',
      checks: { db: [{ status: 'pass' }] },
    })
    const ready = await app.inject({ url: '/ready', headers: BEARER })
    expect(ready.statusCode).toBe(200)
    expect(ready.json().breakers).toEqual(expect.any(Array))
    expect((await app.inject({ method: 'HEAD', url: '/ready' })).statusCode).toBe(200)
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const) {
      const r = await app.inject({ method, url: '/ready' })
      expect([method, r.statusCode, r.headers.allow]).toEqual([method, 405, 'GET, HEAD'])
    }
    await app.close()
    expect(health.isShuttingDown).toBe(false) // closeWithHealth: false
  })

  it('real listen: health.shutdown() drains, then closes fastify (its onClose hooks run), then resources', async () => {
    const health = await healthWith(() => true)
    const order: string[] = []
    const app = Fastify()
    await app.register(healthPlugin, { health, livenessPath: '/live', readinessPath: '/readyz' })
    app.addHook('onClose', async () => {
      order.push('fastify.onClose')
    })
    health.onShutdown('db', () => {
      order.push('db.close')
    })
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    expect((await fetch(`${url}/readyz`)).status).toBe(200)
    const done = health.shutdown({ drainDelayMs: 500 })
    expect((await fetch(`${url}/readyz`)).status).toBe(503)
    expect((await fetch(`${url}/live`)).status).toBe(200)
    const report = await done
    expect(report.clean).toBe(true)
    expect(order).toEqual(['fastify.onClose', 'db.close'])
    await expect(fetch(`${url}/live`)).rejects.toThrow()
  })

  it('a request in flight when fastify closes still completes', async () => {
    const health = await healthWith(() => true)
    const app = Fastify()
    await app.register(healthPlugin, { health })
    let received!: () => void
    const inFlight = new Promise<void>((r) => {
      received = r
    })
    app.get('/slow', async () => {
      received()
      await new Promise((r) => setTimeout(r, 300))
      return { done: true }
    })
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    const slow = fetch(`${url}/slow`)
    // Shut down once the request is in flight (a fixed sleep raced with a busy machine).
    await inFlight
    const report = await health.shutdown({ drainDelayMs: 0 })
    const res = await slow
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ done: true })
    expect(report.clean).toBe(true)
  })

  it('fastify.close() started elsewhere fails readiness and runs health hooks after the server closed', async () => {
    const health = await healthWith(() => true)
    const order: string[] = []
    const app = Fastify()
    await app.register(healthPlugin, { health })
    app.addHook('onClose', async () => {
      order.push('fastify.onClose')
    })
    health.onShutdown('db', () => {
      order.push('db.close')
    })
    await app.ready()
    await app.close()
    expect(health.state).toBe('closed')
    expect(order).toEqual(['fastify.onClose', 'db.close'])
  })

  it('rejects bad options', async () => {
    const app = Fastify()
    await expect(app.register(healthPlugin, { health: {} as Health })).rejects.toMatchObject({
      code: 'E_CONFIG',
    })
  })
})
