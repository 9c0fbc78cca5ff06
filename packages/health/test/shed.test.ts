import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { ResilientError } from '@resilient/core'
import { createHealth, type Health, type HealthOptions } from '@resilient/health'
import { healthRoutes } from '@resilient/health/express'
import healthPlugin from '@resilient/health/fastify'
import express from 'express'
import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { call } from './helpers.js'

/** Load shedding against the real event loop and heap of this process. */

const created: Health[] = []
const closers: (() => Promise<unknown>)[] = []
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()))
  await Promise.all(created.splice(0).map((h) => h.shutdown({ drainDelayMs: 0 })))
})

function healthWith(shed: HealthOptions['shed'], extra: HealthOptions = {}): Health {
  const h = createHealth({
    eventLoop: false,
    verbose: 'query',
    checks: { db: async () => true },
    shed,
    ...extra,
  })
  created.push(h)
  return h
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
async function until(cond: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(5)
  }
}
function block(ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) {
    // the event loop is busy
  }
}

describe('thresholds', () => {
  it('event-loop delay: a request parsed late in a long loop turn is shed at once, then until a sample is on time', async () => {
    const health = healthWith({ maxEventLoopDelayMs: 100, sampleIntervalMs: 10 })
    await health.refresh()
    await sleep(30)
    expect(health.shedding).toBeUndefined()
    expect(call((req, res) => health.shed(req, res) || res.writeHead(200).end()).statusCode).toBe(200)
    block(400)
    // Still in the same loop turn: the sampler is overdue by ~400 ms.
    const shed = call((req, res) => void health.shed(req, res))
    expect(shed.statusCode).toBe(503)
    expect(shed.headers['retry-after']).toBe(1)
    expect(shed.json).toEqual({ error: 'OVERLOADED', message: 'the server is overloaded: retry later' })
    // The next sample sees the delay: readiness reports it (warn: still 200).
    await until(() => health.shedStats()!.last.eventLoopDelayMs > 100, 5_000, 'sample')
    // Once samples are on time again, nothing is shed.
    await until(() => health.shedding === undefined, 5_000, 'recovery')
    expect(health.shedStats()).toMatchObject({ shed: 1, byReason: { eventLoopDelay: 1 } })
  })

  it('event-loop utilization: a loop busy in short turns (no single long delay) is shed while busy', async () => {
    const health = healthWith({
      maxEventLoopDelayMs: false,
      maxEventLoopUtilization: 0.9,
      sampleIntervalMs: 50,
    })
    const changes: string[] = []
    health.onShedChange((c) => changes.push(`${c.shedding}:${c.reason}`))
    await sleep(100)
    expect(health.shedding).toBeUndefined()
    // 2 ms turns back to back for up to 2 s: utilization near 1, no delay past 50 ms.
    let seen: string | undefined
    const end = performance.now() + 2_000
    while (performance.now() < end && !seen) {
      block(2)
      await new Promise((r) => setImmediate(r))
      seen = health.shedding
    }
    expect(seen).toBe('eventLoopUtilization')
    expect(health.report().checks.load?.[0]).toMatchObject({
      status: 'warn',
      output: expect.stringMatching(/^shedding load: eventLoopUtilization [01]\.\d{3} exceeds 0\.9$/),
    })
    await until(() => health.shedding === undefined, 5_000, 'recovery')
    expect(changes).toEqual(['true:eventLoopUtilization', 'false:eventLoopUtilization'])
  })

  it('heap used: shed while the heap is above the limit, served again once it is collected', async () => {
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    gc()
    const { heapUsed } = process.memoryUsage()
    const health = healthWith({
      maxEventLoopDelayMs: false,
      maxHeapUsedBytes: heapUsed + 48 * 2 ** 20,
      sampleIntervalMs: 10,
    })
    await sleep(30)
    expect(health.shedding).toBeUndefined()
    let ballast: object[] | undefined = Array.from({ length: 2_000_000 }, (_, i) => ({ i, s: `x${i}` }))
    await until(() => health.shedding === 'heapUsed', 5_000, 'heap over')
    expect(ballast.length).toBe(2_000_000)
    ballast = undefined
    gc()
    await until(() => health.shedding === undefined, 5_000, 'heap back under')
  })

  it('RSS: shed while the resident set is above the limit', async () => {
    await sleep(200) // let memory freed by earlier tests leave the resident set first
    const rss = process.memoryUsage.rss()
    const health = healthWith({
      maxEventLoopDelayMs: false,
      maxRssBytes: rss + 64 * 2 ** 20,
      sampleIntervalMs: 10,
    })
    await sleep(30)
    expect(health.shedding).toBeUndefined()
    const ballast = Buffer.alloc(384 * 2 ** 20, 1) // touched pages: resident
    await until(() => health.shedding === 'rss', 5_000, 'rss over')
    expect(ballast[ballast.length - 1]).toBe(1)
  })
})

async function listen(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  closers.push(() => new Promise((r) => server.close(r)))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** Always over (a heap limit of 1 byte), so that the adapters can be checked without load. */
const ALWAYS = { maxEventLoopDelayMs: false, maxHeapUsedBytes: 1, sampleIntervalMs: 10 } as const

async function expectShedding(url: string, health: Health, readiness: 200 | 503) {
  await until(() => health.shedding === 'heapUsed', 5_000, 'shedding')
  const app = await fetch(`${url}/books/1`)
  expect(app.status).toBe(503)
  expect(app.headers.get('retry-after')).toBe('7')
  expect((await fetch(`${url}/healthz`)).status).toBe(200)
  const ready = await fetch(`${url}/ready`)
  expect(ready.status).toBe(readiness)
  expect(((await ready.json()) as any).checks.load).toEqual([{ status: readiness === 200 ? 'warn' : 'fail' }])
  const metrics = await (await fetch(`${url}/metrics`)).text()
  expect(metrics).toMatch(/^resilient_health_shed_requests_total\{reason="heapUsed"\} [1-9]\d*$/m)
  expect(metrics).toMatch(/^resilient_health_shedding 1$/m)
  expect(health.shedStats()!.byReason.heapUsed).toBeGreaterThanOrEqual(1)
}

describe('adapters: application requests get 503 with Retry-After, probes and /metrics do not', () => {
  it('node:http: health.shed(req, res)', async () => {
    const health = healthWith({ ...ALWAYS, retryAfterSeconds: 7 })
    await health.refresh()
    const url = await listen((req, res) => {
      if (req.url === '/healthz') return health.liveness(req, res)
      if (req.url === '/ready') return health.readiness(req, res)
      if (req.url === '/metrics') return health.metrics(req, res)
      if (health.shed(req, res)) return
      res.end('book')
    })
    await expectShedding(url, health, 200)
  })

  it("Express: healthRoutes() sheds every route after it; readiness 'fail' when configured", async () => {
    const health = healthWith({ ...ALWAYS, retryAfterSeconds: 7, readiness: 'fail' })
    await health.refresh()
    const app = express()
    app.use(healthRoutes(health, { metricsPath: '/metrics' }))
    app.get('/books/:id', (_req, res) => {
      res.send('book')
    })
    await expectShedding(await listen(app), health, 503)
  })

  it('Fastify: an onRequest hook sheds every route but the probes and metrics', async () => {
    const health = healthWith({ ...ALWAYS, retryAfterSeconds: 7 })
    await health.refresh()
    const app = Fastify()
    await app.register(healthPlugin, { health, metricsPath: '/metrics', closeWithHealth: false })
    app.get('/books/:id', async () => 'book')
    await app.listen({ port: 0, host: '127.0.0.1' })
    closers.push(() => app.close())
    await expectShedding(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, health, 200)
  })

  it('without shed, nothing is shed and readiness has no load entry', async () => {
    const health = createHealth({ eventLoop: false, checks: {} })
    created.push(health)
    expect(health.shed({} as http.IncomingMessage, {} as http.ServerResponse)).toBe(false)
    expect(health.shedStats()).toBeUndefined()
    expect(health.report().checks.load).toBeUndefined()
  })
})

describe('options', () => {
  it.each([
    [{ shed: { maxEventLoopDelayMs: 0 } }, 'health.shed.maxEventLoopDelayMs'],
    [{ shed: { maxEventLoopUtilization: 1.5 } }, 'health.shed.maxEventLoopUtilization'],
    [{ shed: { maxHeapUsedBytes: -1 } }, 'health.shed.maxHeapUsedBytes'],
    [{ shed: { maxRssBytes: '1GB' } }, 'health.shed.maxRssBytes'],
    [{ shed: { sampleIntervalMs: 1 } }, 'health.shed.sampleIntervalMs'],
    [{ shed: { retryAfterSeconds: 0.5 } }, 'health.shed.retryAfterSeconds'],
    [{ shed: { readiness: 'pass' } }, 'health.shed.readiness'],
    [{ shed: { maxDelay: 5 } }, 'health.shed.maxDelay'],
    [{ shed: { maxEventLoopDelayMs: false } }, 'health.shed'],
    [{ shed: 'on' }, 'health.shed'],
    [{ shed: true, checks: { load: () => true } }, 'health.checks.load'],
  ] as [unknown, string][])('%o throws E_CONFIG naming %s', (options, field) => {
    try {
      createHealth({ eventLoop: false, autoStart: false, ...(options as object) })
      expect.unreachable()
    } catch (err) {
      expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
      expect((err as ResilientError).details.field).toBe(field)
    }
  })
})
