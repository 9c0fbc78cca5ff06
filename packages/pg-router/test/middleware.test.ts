import type { AddressInfo } from 'node:net'
import { ResilientError } from '@resilient/core'
import { rywSession } from '@resilient/pg-router/express'
import rywPluginDefault, { rywPlugin } from '@resilient/pg-router/fastify'
import express from 'express'
import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'

/** A stand-in for the router: the token is a counter of writes; 'bad' is refused. */
class FakeSession {
  #n: number
  constructor(token?: string) {
    if (token === 'bad') throw new ResilientError('E_CONFIG', 'bad token')
    this.#n = token ? Number(token.replace('t', '')) : 0
  }
  get token(): string {
    return this.#n === 0 ? '' : `t${this.#n}`
  }
  async write(): Promise<void> {
    this.#n++
  }
}
const fakeDb = {
  calls: [] as (string | undefined)[],
  session(token?: string) {
    this.calls.push(token)
    return new FakeSession(token)
  },
}

const closers: (() => Promise<unknown>)[] = []
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()))
  fakeDb.calls = []
})

async function listen(app: express.Express): Promise<string> {
  const server = app.listen(0, '127.0.0.1')
  await new Promise((r) => server.once('listening', r))
  closers.push(() => new Promise((r) => server.close(r)))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

function expressApp(options?: Parameters<typeof rywSession>[1]) {
  const app = express()
  app.use(rywSession(fakeDb, options))
  app.post('/write', async (req, res) => {
    await (req.db as unknown as FakeSession).write()
    res.cookie('other', '1')
    res.json({ token: req.db.token })
  })
  app.post('/write-stream', async (req, res) => {
    await (req.db as unknown as FakeSession).write()
    res.write('a')
    res.end('b')
  })
  app.post('/write-head', async (req, res) => {
    await (req.db as unknown as FakeSession).write()
    res.writeHead(201, { 'content-type': 'text/plain' }).end('ok')
  })
  app.post('/write-after', async (req, res) => {
    res.status(202).send('accepted')
    await (req.db as unknown as FakeSession).write()
  })
  app.get('/read', (req, res) => {
    res.json({ token: req.db.token })
  })
  return app
}

describe('express rywSession', () => {
  it('sends the new token after a write, in the header', async () => {
    const url = await listen(expressApp())
    const r = await fetch(`${url}/write`, { method: 'POST' })
    expect(r.headers.get('x-ryw-token')).toBe('t1')
    expect(await r.json()).toEqual({ token: 't1' })
    // The next request resumes the session from the header.
    const r2 = await fetch(`${url}/write`, { method: 'POST', headers: { 'x-ryw-token': 't1' } })
    expect(r2.headers.get('x-ryw-token')).toBe('t2')
    expect(fakeDb.calls).toEqual([undefined, 't1'])
  })

  it('does not repeat an unchanged token; an absent token gives no header', async () => {
    const url = await listen(expressApp())
    const r = await fetch(`${url}/read`, { headers: { 'x-ryw-token': 't5' } })
    expect(await r.json()).toEqual({ token: 't5' })
    expect(r.headers.get('x-ryw-token')).toBeNull()
    const r2 = await fetch(`${url}/read`)
    expect(r2.headers.get('x-ryw-token')).toBeNull()
  })

  it('works with res.write/res.end and an explicit writeHead', async () => {
    const url = await listen(expressApp())
    const a = await fetch(`${url}/write-stream`, { method: 'POST' })
    expect(a.headers.get('x-ryw-token')).toBe('t1')
    expect(await a.text()).toBe('ab')
    const b = await fetch(`${url}/write-head`, { method: 'POST' })
    expect(b.status).toBe(201)
    expect(b.headers.get('x-ryw-token')).toBe('t1')
  })

  it('cannot carry a write that finishes after the response started (documented)', async () => {
    const url = await listen(expressApp())
    const r = await fetch(`${url}/write-after`, { method: 'POST' })
    expect(r.status).toBe(202)
    expect(r.headers.get('x-ryw-token')).toBeNull()
  })

  it('a refused or oversized token gives a fresh session, not an error', async () => {
    const url = await listen(expressApp())
    const r = await fetch(`${url}/read`, { headers: { 'x-ryw-token': 'bad' } })
    expect(r.status).toBe(200)
    expect(await r.json()).toEqual({ token: '' })
    const r2 = await fetch(`${url}/read`, { headers: { 'x-ryw-token': `t${'1'.repeat(2000)}` } })
    expect(r2.status).toBe(200)
    expect(fakeDb.calls).toEqual(['bad', undefined, undefined])
  })

  it('cookie mode: sets the cookie next to the handler cookies, reads it back, header wins', async () => {
    const url = await listen(expressApp({ cookie: { name: 'ryw', secure: true, maxAgeSec: 60 } }))
    const r = await fetch(`${url}/write`, { method: 'POST' })
    const cookies = r.headers.getSetCookie()
    expect(cookies).toHaveLength(2)
    expect(cookies).toContain('ryw=t1; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax')
    expect(cookies.some((c) => c.startsWith('other=1'))).toBe(true)
    expect(r.headers.get('x-ryw-token')).toBe('t1')

    const r2 = await fetch(`${url}/read`, { headers: { cookie: 'a=b; ryw=t1; c=d' } })
    expect(await r2.json()).toEqual({ token: 't1' })
    const r3 = await fetch(`${url}/read`, { headers: { cookie: 'ryw=t1', 'x-ryw-token': 't7' } })
    expect(await r3.json()).toEqual({ token: 't7' })
  })

  it('a custom header name', async () => {
    const url = await listen(expressApp({ header: 'X-Session-Token' }))
    const r = await fetch(`${url}/write`, { method: 'POST' })
    expect(r.headers.get('x-session-token')).toBe('t1')
  })

  const bad: [string, unknown, unknown, RegExp][] = [
    ['no db', undefined, {}, /invalid option db/],
    ['db without session', {}, {}, /db\.session: expected a function/],
    ['a bad header', fakeDb, { header: 'x y' }, /ryw\.header/],
    ['a typo', fakeDb, { cookei: 'x' }, /unknown option ryw\.cookei/],
    ['a bad cookie name', fakeDb, { cookie: 'a;b' }, /ryw\.cookie: expected a cookie name/],
    [
      'sameSite none without secure',
      fakeDb,
      { cookie: { name: 'r', sameSite: 'none' } },
      /ryw\.cookie\.secure/,
    ],
    ['a bad sameSite', fakeDb, { cookie: { name: 'r', sameSite: 'loose' } }, /ryw\.cookie\.sameSite/],
  ]
  it.each(bad)('%s -> E_CONFIG', (_n, db, options, message) => {
    let err: unknown
    try {
      rywSession(db as never, options as never)
    } catch (e) {
      err = e
    }
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    expect((err as Error).message).toMatch(message)
  })
})

describe('fastify rywPlugin', () => {
  async function fastifyApp(options: Record<string, unknown> = {}) {
    const app = Fastify()
    closers.push(() => app.close())
    await app.register(rywPlugin, { db: fakeDb, ...options })
    app.post('/write', async (req, reply) => {
      await (req.db as unknown as FakeSession).write()
      reply.header('set-cookie', 'other=1; Path=/')
      return { token: req.db.token }
    })
    app.get('/read', async (req) => ({ token: req.db.token }))
    return app
  }

  it('is the default export too', () => {
    expect(rywPluginDefault).toBe(rywPlugin)
  })

  it('decorates request.db and sends the new token in onSend', async () => {
    const app = await fastifyApp()
    const r = await app.inject({ method: 'POST', url: '/write' })
    expect(r.headers['x-ryw-token']).toBe('t1')
    expect(r.json()).toEqual({ token: 't1' })
    const r2 = await app.inject({ method: 'GET', url: '/read', headers: { 'x-ryw-token': 't1' } })
    expect(r2.json()).toEqual({ token: 't1' })
    expect(r2.headers['x-ryw-token']).toBeUndefined()
    const r3 = await app.inject({ method: 'GET', url: '/read', headers: { 'x-ryw-token': 'bad' } })
    expect(r3.statusCode).toBe(200)
    expect(r3.json()).toEqual({ token: '' })
  })

  it('cookie mode keeps the handler cookies', async () => {
    const app = await fastifyApp({ cookie: 'ryw' })
    const r = await app.inject({ method: 'POST', url: '/write' })
    expect(r.headers['set-cookie']).toEqual([
      'other=1; Path=/',
      'ryw=t1; Path=/; Max-Age=300; HttpOnly; SameSite=Lax',
    ])
    const r2 = await app.inject({ method: 'GET', url: '/read', headers: { cookie: 'ryw=t3' } })
    expect(r2.json()).toEqual({ token: 't3' })
  })

  it('bad options fail the registration with E_CONFIG', async () => {
    const app = Fastify()
    closers.push(() => app.close())
    const err = await app.register(rywPlugin, { db: fakeDb, header: '' } as never).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    expect((err as Error).message).toMatch(/ryw\.header/)
  })
})
