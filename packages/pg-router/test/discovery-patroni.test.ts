import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import * as http from 'node:http'
import * as https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { ResilientError } from '@resilient/core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createPatroniDiscovery } from '../src/discovery/patroni.js'
import type { Discovery, DiscoveryErrorEvent } from '../src/discovery/types.js'

// A real Patroni 3.0.2 answer from the lab, plus a member without host (no conn_url yet).
const cluster3 = {
  members: [
    {
      name: 'pg0',
      role: 'leader',
      state: 'running',
      api_url: 'http://127.0.0.1:8008/patroni',
      host: '127.0.0.1',
      port: 5432,
      timeline: 3,
    },
    {
      name: 'pg1',
      role: 'sync_standby',
      state: 'streaming',
      api_url: 'http://127.0.0.1:8009/patroni',
      host: '127.0.0.1',
      port: 5433,
      timeline: 3,
      lag: 0,
    },
    {
      name: 'pg2',
      role: 'replica',
      state: 'running',
      api_url: 'http://127.0.0.1:8010/patroni',
      host: '127.0.0.1',
      port: 5434,
      lag: 'unknown',
    },
    { name: 'pg3', role: 'replica', state: 'starting', api_url: 'http://127.0.0.1:8011/patroni' },
  ],
}

// Patroni 4.x: quorum commit, receive/replay lag fields, unknown future role names.
const cluster4 = {
  members: [
    { name: 'a', role: 'leader', state: 'running', host: '10.0.0.1', port: 5432, timeline: 7 },
    {
      name: 'b',
      role: 'quorum_standby',
      state: 'streaming',
      host: '10.0.0.2',
      port: 5432,
      timeline: 7,
      lag: 1024,
      receive_lag: 0,
      replay_lag: 1024,
      lsn: '0/5000000',
    },
    { name: 'c', role: 'standby_leader', state: 'running', host: '10.0.0.3', timeline: 7, lag: 0 },
    { name: 'd', role: 'witness-of-the-future', state: 'running', host: '10.0.0.4', port: 6432 },
  ],
  scheduled_switchover: { at: '2026-01-01T00:00:00+00:00', from: 'a' },
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

interface Fake {
  url: string
  /** GET .../cluster requests. */
  hits: number
  handler: Handler
  server: http.Server
}

const servers: http.Server[] = []
const discoveries: Discovery[] = []
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)

function json(body: unknown): Handler {
  return (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
}

async function fake(handler: Handler, opts?: https.ServerOptions): Promise<Fake> {
  const f = { hits: 0, handler } as Fake
  const listener: http.RequestListener = (req, res) => {
    if (req.url?.endsWith('/cluster')) f.hits++ // GET /patroni (the scope check) is not counted
    f.handler(req, res)
  }
  const server = opts ? https.createServer(opts, listener) : http.createServer(listener)
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  f.server = server
  f.url = `${opts ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`
  return f
}

/** A port that nothing listens on. */
async function deadUrl(): Promise<string> {
  const s = http.createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return `http://127.0.0.1:${port}`
}

function track(d: Discovery): { d: Discovery; events: DiscoveryErrorEvent[] } {
  discoveries.push(d)
  const events: DiscoveryErrorEvent[] = []
  d.onError((e) => events.push(e))
  return { d, events }
}

beforeAll(() => {
  process.on('unhandledRejection', onUnhandled)
})

afterEach(async () => {
  await Promise.all(discoveries.splice(0).map((d) => d.close()))
  for (const s of servers.splice(0)) {
    s.closeAllConnections()
    s.close()
  }
})

afterAll(() => {
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

describe('valid answers', () => {
  it('maps a Patroni 3.x /cluster answer', async () => {
    const f = await fake(json(cluster3))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    const r = await d.discover()
    expect(r.source).toBe(`${f.url}/cluster`)
    expect(typeof r.at).toBe('number')
    expect(r.conflict).toBeUndefined()
    expect(r.members).toEqual([
      {
        name: 'pg0',
        host: '127.0.0.1',
        port: 5432,
        role: 'primary',
        state: 'running',
        lagBytes: null,
        timeline: 3,
        sync: false,
      },
      {
        name: 'pg1',
        host: '127.0.0.1',
        port: 5433,
        role: 'replica',
        state: 'streaming',
        lagBytes: 0,
        timeline: 3,
        sync: true,
      },
      {
        name: 'pg2',
        host: '127.0.0.1',
        port: 5434,
        role: 'replica',
        state: 'running',
        lagBytes: null,
        timeline: null,
        sync: false,
      },
    ])
    expect(events).toEqual([])
  })

  it('maps a Patroni 4.x answer: quorum_standby, standby_leader, default port, unknown roles', async () => {
    const f = await fake(json(cluster4))
    const { d } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    const r = await d.discover()
    expect(r.members.map((m) => [m.name, m.role, m.sync, m.lagBytes, m.port])).toEqual([
      ['a', 'primary', false, null, 5432],
      ['b', 'replica', true, 1024, 5432],
      ['c', 'replica', false, 0, 5432],
      ['d', 'unknown', false, null, 6432],
    ])
  })

  it('a member tagged noloadbalance (any value Patroni takes as true) is marked noLoadBalance', async () => {
    const tagged = (name: string, tags: unknown) => ({
      name,
      role: 'replica',
      state: 'running',
      host: 'h',
      port: 1,
      tags,
    })
    const f = await fake(
      json({
        members: [
          tagged('t1', { noloadbalance: true }),
          tagged('t2', { noloadbalance: 'yes' }),
          tagged('f1', { noloadbalance: false }),
          tagged('f2', { noloadbalance: 0, nofailover: true }),
          tagged('f3', 'not an object'),
          { name: 'f4', role: 'replica', state: 'running', host: 'h', port: 1 },
        ],
      }),
    )
    const { d } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    const r = await d.discover()
    expect(r.members.map((m) => [m.name, m.noLoadBalance === true])).toEqual([
      ['t1', true],
      ['t2', true],
      ['f1', false],
      ['f2', false],
      ['f3', false],
      ['f4', false],
    ])
  })

  it.each(['master', 'primary', 'leader'])('treats role %s as primary', async (role) => {
    const f = await fake(json({ members: [{ name: 'x', role, state: 'running', host: 'h', port: 1 }] }))
    const { d } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    expect((await d.discover()).members[0]?.role).toBe('primary')
  })

  it('keeps a path prefix (a proxy in front of Patroni)', async () => {
    const f = await fake((req, res) => {
      if (req.url === '/patroni/cluster') return json(cluster3)(req, res)
      res.writeHead(404).end()
    })
    const { d } = track(createPatroniDiscovery({ endpoints: [`${f.url}/patroni`] }))
    expect((await d.discover()).source).toBe(`${f.url}/patroni/cluster`)
  })
})

describe('broken endpoints: an event each, then the next endpoint', () => {
  const garbage: [string, Handler, RegExp][] = [
    [
      'HTML',
      (_q, s) => {
        s.writeHead(200, { 'content-type': 'text/html' })
        s.end('<html><body>502 Bad Gateway</body></html>')
      },
      /malformed JSON \(text\/html/,
    ],
    [
      'malformed JSON',
      (_q, s) => {
        s.writeHead(200, { 'content-type': 'application/json' })
        s.end('{"members": [{"name": "pg0",')
      },
      /malformed JSON/,
    ],
    [
      'a huge declared body',
      (_q, s) => {
        s.writeHead(200, { 'content-type': 'application/json', 'content-length': String(5_000_000) })
        s.write(' '.repeat(1000))
      },
      /exceeds maxBodyBytes/,
    ],
    [
      'a huge chunked body',
      (_q, s) => {
        s.writeHead(200, { 'content-type': 'application/json' })
        const chunk = ' '.repeat(64 * 1024)
        let n = 0
        const pump = () => {
          while (n++ < 100) if (!s.write(chunk)) return void s.once('drain', pump)
          s.end('{"members":[]}')
        }
        s.on('error', () => {})
        pump()
      },
      /exceeds maxBodyBytes/,
    ],
    [
      'HTTP 500',
      (_q, s) => {
        s.writeHead(500, { 'content-type': 'application/json' })
        s.end('{"error":"boom"}')
      },
      /HTTP 500/,
    ],
    [
      'HTTP 503 with no body',
      (_q, s) => {
        s.writeHead(503).end()
      },
      /HTTP 503/,
    ],
    ['JSON null', json(null), /not a JSON object/],
    ['members missing', json({ state: 'running' }), /members is not an array/],
    ['members empty', json({ members: [] }), /members is empty/],
    ['a member without name', json({ members: [{ role: 'leader', host: 'h', port: 1 }] }), /name/],
    [
      'a port that is a string',
      json({ members: [{ name: 'a', role: 'leader', host: 'h', port: '5432' }] }),
      /port is not a port number/,
    ],
    [
      'a lag that is a string',
      json({ members: [{ name: 'a', role: 'replica', host: 'h', port: 1, lag: '1 MB' }] }),
      /lag is neither/,
    ],
    [
      'duplicate member names',
      json({
        members: [
          { name: 'a', role: 'leader', host: 'h', port: 1 },
          { name: 'a', role: 'replica', host: 'h', port: 2 },
        ],
      }),
      /duplicate/,
    ],
    [
      'headers sent, body stalls',
      (_q, s) => {
        s.writeHead(200, { 'content-type': 'application/json' })
        s.write('{"members": [')
      },
      /timed out/,
    ],
    ['no answer at all', () => {}, /timed out/],
    [
      'a connection reset',
      (q) => {
        q.socket.destroy()
      },
      /socket|closed|reset/i,
    ],
  ]

  it.each(garbage)('%s', async (_name, handler, reason) => {
    const bad = await fake(handler)
    const good = await fake(json(cluster3))
    const { d, events } = track(
      createPatroniDiscovery({ endpoints: [bad.url, good.url], timeoutMs: 300, maxBodyBytes: 100_000 }),
    )
    const r = await d.discover()
    expect(r.source).toBe(`${good.url}/cluster`)
    expect(r.members).toHaveLength(3)
    expect(events).toHaveLength(1)
    expect(events[0]!.source).toBe(`${bad.url}/cluster`)
    expect(ResilientError.is(events[0]!.error, 'E_DISCOVERY')).toBe(true)
    expect(events[0]!.error.message).toMatch(reason)

    // Alone, the same endpoint makes discover() reject with E_DISCOVERY, the cause kept.
    const alone = track(
      createPatroniDiscovery({ endpoints: [bad.url], timeoutMs: 300, maxBodyBytes: 100_000 }),
    )
    const err = await alone.d.discover().catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_DISCOVERY')).toBe(true)
    expect((err as ResilientError).cause).toBe(alone.events[0]!.error)
    expect((err as ResilientError).details.failures).toEqual([
      { source: `${bad.url}/cluster`, message: alone.events[0]!.error.message },
    ])
  })

  it('an endpoint that refuses connections', async () => {
    const dead = await deadUrl()
    const good = await fake(json(cluster3))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [dead, good.url] }))
    expect((await d.discover()).source).toBe(`${good.url}/cluster`)
    expect(events.map((e) => e.source)).toEqual([`${dead}/cluster`])
    expect(events[0]!.error.message).toMatch(/ECONNREFUSED/)
  })

  it('every endpoint broken: E_DISCOVERY naming each, events in order', async () => {
    const a = await deadUrl()
    const b = await fake(json({ members: 'no' }))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [a, b.url] }))
    const err = (await d.discover().catch((e: unknown) => e)) as ResilientError
    expect(err.code).toBe('E_DISCOVERY')
    expect(err.message).toMatch(/2 tried/)
    expect(events.map((e) => e.source)).toEqual([`${a}/cluster`, `${b.url}/cluster`])
    expect(err.cause).toBe(events[1]!.error)
  })
})

/** A Patroni that answers /cluster, /patroni (with `scope`) and /history. */
function patroni(scope: string | undefined, body: unknown = cluster3, history: unknown = []): Handler {
  return (req, res) => {
    if (req.url === '/patroni') {
      if (scope === undefined) return void res.writeHead(404).end()
      return json({ state: 'running', role: 'master', patroni: { version: '3.0.2', scope } })(req, res)
    }
    if (req.url === '/history') return json(history)(req, res)
    return json(body)(req, res)
  }
}

describe('scope: one cluster only', () => {
  it("learns the first endpoint's scope; an endpoint of another cluster is refused (an event), never used", async () => {
    const a = await fake(patroni('main'))
    const other = await fake(patroni('other', cluster4))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [a.url, other.url], timeoutMs: 300 }))
    expect((await d.discover()).members[0]?.name).toBe('pg0')
    a.handler = (_q, s) => void s.writeHead(503).end()
    const err = await d.discover().catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_DISCOVERY' })
    expect(events.map((e) => e.error.message)).toEqual([
      expect.stringContaining('HTTP 503'),
      expect.stringContaining("Patroni scope 'other' is not 'main' (the first one seen): refused"),
    ])
    expect((events[1]!.error as ResilientError).details).toMatchObject({
      reason: 'scope',
      scope: 'other',
      expected: 'main',
    })
    // the right cluster back: used again
    a.handler = patroni('main')
    expect((await d.discover()).members[0]?.name).toBe('pg0')
  })

  it('patroni.scope: an endpoint of another cluster is refused from the first poll', async () => {
    const other = await fake(patroni('other', cluster4))
    const good = await fake(patroni('main'))
    const { d, events } = track(
      createPatroniDiscovery({ endpoints: [other.url, good.url], scope: 'main', timeoutMs: 300 }),
    )
    expect((await d.discover()).source).toBe(`${good.url}/cluster`)
    expect(events).toHaveLength(1)
    expect(events[0]!.error.message).toContain("scope 'other' is not 'main' (patroni.scope)")
  })

  it('a scope in the /cluster body is checked on every answer; an endpoint without GET /patroni is accepted', async () => {
    const f = await fake(patroni(undefined, { ...cluster3, scope: 'main' }))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    await d.discover()
    f.handler = patroni(undefined, { ...cluster3, scope: 'impostor' })
    await expect(d.discover()).rejects.toMatchObject({ code: 'E_DISCOVERY' })
    expect(events[0]!.error.message).toContain("scope 'impostor' is not 'main'")
    const bare = await fake(patroni(undefined))
    const { d: d2, events: e2 } = track(createPatroniDiscovery({ endpoints: [bare.url] }))
    expect((await d2.discover()).members).toHaveLength(3)
    expect(e2).toEqual([])
  })

  it('checks the scope once per endpoint, and again after it failed', async () => {
    let patroniHits = 0
    const f = await fake((req, res) => {
      if (req.url === '/patroni') patroniHits++
      patroni('main')(req, res)
    })
    const { d } = track(createPatroniDiscovery({ endpoints: [f.url], timeoutMs: 300 }))
    for (let i = 0; i < 3; i++) await d.discover()
    expect(patroniHits).toBe(1)
    f.handler = (_q, s) => void s.writeHead(500).end()
    await expect(d.discover()).rejects.toMatchObject({ code: 'E_DISCOVERY' })
    f.handler = (req, res) => {
      if (req.url === '/patroni') patroniHits++
      patroni('main')(req, res)
    }
    await d.discover()
    expect(patroniHits).toBe(2)
  })
})

describe('timeline history', () => {
  it('history() reads GET /history: where each timeline ended', async () => {
    const f = await fake(
      patroni('main', cluster3, [
        [1, 67271712, 'no recovery target specified', '2026-12-04T17:47:56+00:00', 'pg2'],
        [2, 83890024, 'no recovery target specified', '2026-12-04T17:50:00+00:00', 'pg0'],
      ]),
    )
    const { d } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    await d.discover()
    expect(await d.history!()).toEqual([
      { timeline: 1, endLsn: 67271712n },
      { timeline: 2, endLsn: 83890024n },
    ])
    f.handler = patroni('main', cluster3, { not: 'a history' })
    await expect(d.history!()).rejects.toMatchObject({ code: 'E_DISCOVERY' })
  })
})

describe('listeners', () => {
  it('a listener that throws breaks neither discover() nor the other listeners', async () => {
    const dead = await deadUrl()
    const good = await fake(json(cluster3))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [dead, good.url] }))
    const warnings: Error[] = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on('warning', onWarning)
    try {
      d.onError(() => {
        throw new Error('listener bug')
      })
      const r = await d.discover()
      expect(r.source).toBe(`${good.url}/cluster`)
      expect(events).toHaveLength(1)
      await new Promise((res) => setImmediate(res))
      expect(warnings.some((w) => /listener bug/.test(w.message))).toBe(true)
    } finally {
      process.off('warning', onWarning)
    }
  })

  it('a disposed listener gets no more events', async () => {
    const dead = await deadUrl()
    const good = await fake(json(cluster3))
    const d = createPatroniDiscovery({ endpoints: [dead, good.url] })
    discoveries.push(d)
    const seen: string[] = []
    const sub = d.onError((e) => seen.push(e.source))
    sub.dispose()
    await d.discover()
    expect(seen).toEqual([])
  })
})

describe('endpoint order', () => {
  it('starts with the last good endpoint and tries a failed one last', async () => {
    const a = await fake(json(cluster3))
    const b = await fake(json(cluster4))
    const c = await fake(json(cluster3))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [a.url, b.url, c.url], timeoutMs: 300 }))
    expect((await d.discover()).source).toBe(`${a.url}/cluster`)

    // a stalls: one timeout, then b answers.
    a.handler = () => {}
    expect((await d.discover()).source).toBe(`${b.url}/cluster`)
    expect(events).toHaveLength(1)
    const aHits = a.hits

    // Next polls start at b: a costs nothing.
    await d.discover()
    await d.discover()
    expect(a.hits).toBe(aHits)
    expect(b.hits).toBe(3)
    expect(c.hits).toBe(0)

    // b dies too: c (never failed) is tried before a (suspect).
    b.handler = (_q, s) => void s.writeHead(500).end()
    expect((await d.discover()).source).toBe(`${c.url}/cluster`)
    expect(a.hits).toBe(aHits)

    // Everything but a is down: a, then b are tried, a first (its failure is older); a recovers.
    c.handler = (_q, s) => void s.writeHead(500).end()
    a.handler = json(cluster3)
    expect((await d.discover()).source).toBe(`${a.url}/cluster`)
    expect(events.map((e) => e.source.slice(0, a.url.length))).toEqual([a.url, b.url, c.url])
  })
})

describe('abort and close', () => {
  it('an aborted signal rejects at once with E_ABORTED and no request', async () => {
    const f = await fake(json(cluster3))
    const { d, events } = track(createPatroniDiscovery({ endpoints: [f.url] }))
    const ac = new AbortController()
    ac.abort()
    const err = await d.discover(ac.signal).catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_ABORTED')).toBe(true)
    expect(f.hits).toBe(0)
    expect(events).toEqual([])
  })

  it('aborting a stalled poll rejects with E_ABORTED, no event, endpoint not marked suspect', async () => {
    const stall = await fake(() => {})
    const other = await fake(json(cluster3))
    const { d, events } = track(
      createPatroniDiscovery({ endpoints: [stall.url, other.url], timeoutMs: 60_000 }),
    )
    const ac = new AbortController()
    const p = d.discover(ac.signal)
    await new Promise((r) => setTimeout(r, 50))
    ac.abort(new Error('caller gave up'))
    const err = await p.catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_ABORTED')).toBe(true)
    expect(events).toEqual([])
    expect(other.hits).toBe(0)
    stall.handler = json(cluster4)
    expect((await d.discover()).source).toBe(`${stall.url}/cluster`)
  })

  it('discover() after close() rejects with E_SHUTTING_DOWN; close is idempotent', async () => {
    const f = await fake(json(cluster3))
    const d = createPatroniDiscovery({ endpoints: [f.url] })
    await d.discover()
    await d.close()
    await d.close()
    const err = await d.discover().catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_SHUTTING_DOWN')).toBe(true)
  })
})

describe('auth and secrets', () => {
  const password = 'pw-Sup3rSecret!'

  it('sends Basic auth when configured; the password is never shown', async () => {
    const seen: (string | undefined)[] = []
    const f = await fake((req, res) => {
      seen.push(req.headers.authorization)
      res.writeHead(401, { 'www-authenticate': 'Basic' }).end(`denied ${req.headers.authorization}`)
    })
    const { d, events } = track(
      createPatroniDiscovery({ endpoints: [f.url], auth: { username: 'patroni', password } }),
    )
    const err = (await d.discover().catch((e: unknown) => e)) as ResilientError
    expect(seen).toEqual([`Basic ${Buffer.from(`patroni:${password}`).toString('base64')}`])
    expect(err.code).toBe('E_DISCOVERY')
    expect(events[0]!.error.message).toMatch(/HTTP 401/)
    const b64 = Buffer.from(`patroni:${password}`).toString('base64')
    for (const text of [
      inspect(d, { depth: 10, showHidden: true }),
      inspect(err, { depth: 10 }),
      inspect(events, { depth: 10 }),
      JSON.stringify(err.details),
    ]) {
      expect(text).not.toContain(password)
      expect(text).not.toContain(b64)
    }
  })

  it('takes credentials out of an endpoint URL and sends them as Basic auth', async () => {
    const seen: (string | undefined)[] = []
    const f = await fake((req, res) => {
      seen.push(req.headers.authorization)
      json(cluster3)(req, res)
    })
    const withCreds = f.url.replace('http://', `http://admin:${encodeURIComponent(password)}@`)
    const { d } = track(createPatroniDiscovery({ endpoints: [withCreds] }))
    const r = await d.discover()
    // GET /cluster, then GET /patroni (the scope check): both authenticated
    expect(seen).toEqual(Array(2).fill(`Basic ${Buffer.from(`admin:${password}`).toString('base64')}`))
    expect(r.source).toBe(`${f.url}/cluster`)
    expect(inspect(d, { showHidden: true, depth: 10 })).not.toContain(password)
  })
})

describe('TLS', () => {
  let dir: string
  let pem: Record<'ca' | 'serverKey' | 'serverCert' | 'clientKey' | 'clientCert' | 'otherCa', string>

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'patroni-tls-'))
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
    const ca = (name: string) =>
      ssl(
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.crt`,
        '-days',
        '2',
        '-subj',
        `/CN=${name}`,
      )
    const leaf = (name: string, ext: string) => {
      ssl(
        'req',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.csr`,
        '-subj',
        `/CN=${name}`,
      )
      writeFileSync(join(dir, `${name}.ext`), ext)
      ssl(
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-out',
        `${name}.crt`,
        '-days',
        '2',
        '-extfile',
        `${name}.ext`,
      )
    }
    ca('ca')
    ca('other')
    leaf('server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
    leaf('client', 'extendedKeyUsage=clientAuth\n')
    const read = (f: string) => readFileSync(join(dir, f), 'utf8')
    pem = {
      ca: read('ca.crt'),
      otherCa: read('other.crt'),
      serverKey: read('server.key'),
      serverCert: read('server.crt'),
      clientKey: read('client.key'),
      clientCert: read('client.crt'),
    }
  })

  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  const mtls = () =>
    fake(
      (req, res) => {
        const cert = (req.socket as import('node:tls').TLSSocket).getPeerCertificate()
        res.writeHead(200, { 'content-type': 'application/json', 'x-client-cn': String(cert.subject?.CN) })
        res.end(JSON.stringify(cluster3))
      },
      { key: pem.serverKey, cert: pem.serverCert, ca: pem.ca, requestCert: true, rejectUnauthorized: true },
    )

  it('verifies the server with the CA and presents a client certificate', async () => {
    const f = await mtls()
    const { d, events } = track(
      createPatroniDiscovery({
        endpoints: [f.url],
        tls: { ca: pem.ca, cert: pem.clientCert, key: pem.clientKey },
      }),
    )
    const r = await d.discover()
    expect(r.members.map((m) => m.name)).toEqual(['pg0', 'pg1', 'pg2'])
    expect(events).toEqual([])
    const shown = inspect(d, { showHidden: true, depth: 10 })
    expect(shown).not.toContain('PRIVATE KEY')
  })

  it('fails (an event, E_DISCOVERY) without the client certificate', async () => {
    const f = await mtls()
    const { d, events } = track(createPatroniDiscovery({ endpoints: [f.url], tls: { ca: pem.ca } }))
    const err = await d.discover().catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_DISCOVERY')).toBe(true)
    expect(events).toHaveLength(1)
  })

  it('fails when the server certificate is signed by another CA', async () => {
    const f = await mtls()
    const { d, events } = track(
      createPatroniDiscovery({
        endpoints: [f.url],
        tls: { ca: pem.otherCa, cert: pem.clientCert, key: pem.clientKey },
      }),
    )
    const err = await d.discover().catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_DISCOVERY')).toBe(true)
    expect(events[0]!.error.message).toMatch(/certificate/i)
    expect(inspect(err, { depth: 10 })).not.toContain('PRIVATE KEY')
  })
})

describe('options', () => {
  const bad: [string, unknown, RegExp][] = [
    ['no options', undefined, /invalid option patroni: expected an object/],
    ['no endpoints', {}, /patroni\.endpoints: expected a non-empty array/],
    ['empty endpoints', { endpoints: [] }, /patroni\.endpoints: expected a non-empty array/],
    ['a bad URL', { endpoints: ['http://a:8008', 'not a url'] }, /patroni\.endpoints\[1\]: expected an http/],
    ['another protocol', { endpoints: ['ftp://a:8008'] }, /patroni\.endpoints\[0\]: expected an http/],
    ['a query string', { endpoints: ['http://a:8008/?x=1'] }, /patroni\.endpoints\[0\]/],
    [
      'a duplicate',
      { endpoints: ['http://a:8008', 'http://a:8008/'] },
      /patroni\.endpoints\[1\]: expected no duplicate/,
    ],
    [
      'a number endpoint',
      { endpoints: [8008] },
      /patroni\.endpoints\[0\]: expected a non-empty string, got 8008/,
    ],
    ['timeoutMs 0', { endpoints: ['http://a'], timeoutMs: 0 }, /patroni\.timeoutMs/],
    ['timeoutMs NaN', { endpoints: ['http://a'], timeoutMs: Number.NaN }, /patroni\.timeoutMs/],
    ['maxBodyBytes', { endpoints: ['http://a'], maxBodyBytes: 1.5 }, /patroni\.maxBodyBytes/],
    ['a typo', { endpoints: ['http://a'], timeoutMS: 5 }, /unknown option patroni\.timeoutMS/],
    ['scope empty', { endpoints: ['http://a'], scope: '' }, /patroni\.scope/],
    ['scope a number', { endpoints: ['http://a'], scope: 3 }, /patroni\.scope/],
    ['tls not an object', { endpoints: ['https://a'], tls: true }, /patroni\.tls: expected an object/],
    ['tls.cert without key', { endpoints: ['https://a'], tls: { cert: 'x' } }, /patroni\.tls\.key/],
    ['tls.ca a number', { endpoints: ['https://a'], tls: { ca: [1] } }, /patroni\.tls\.ca\[0\]/],
    [
      'auth.password missing',
      { endpoints: ['http://a'], auth: { username: 'u' } },
      /patroni\.auth\.password/,
    ],
    [
      'credentials in both places',
      { endpoints: ['http://u:pw-in-url@a'], auth: { username: 'u', password: 'other' } },
      /patroni\.endpoints\[0\]/,
    ],
  ]
  it.each(bad)('%s -> E_CONFIG naming the field', (_name, options, message) => {
    let err: unknown
    try {
      createPatroniDiscovery(options as never)
    } catch (e) {
      err = e
    }
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    expect((err as Error).message).toMatch(message)
  })

  it('never echoes a string value (a password in the wrong field)', () => {
    const secret = 'hunter2-very-secret'
    for (const options of [
      { endpoints: [secret] },
      { endpoints: ['http://a'], auth: { username: 'u', password: 7 }, timeoutMs: secret },
      { endpoints: [`http://u:${secret}@a`], auth: { username: 'u', password: 'x' } },
    ]) {
      let err: unknown
      try {
        createPatroniDiscovery(options as never)
      } catch (e) {
        err = e
      }
      expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
      expect(inspect(err, { depth: 10 })).not.toContain(secret)
    }
  })
})
