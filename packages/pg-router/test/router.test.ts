import * as dc from 'node:diagnostics_channel'
import type { AddressInfo } from 'node:net'
import * as net from 'node:net'
import { inspect } from 'node:util'
import { Emitter, ResilientError } from '@resilient/core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { channelNames } from '../src/channels.js'
import { classifyError } from '../src/classify.js'
import type { DiscoveredMember, Discovery, DiscoveryResult } from '../src/discovery/types.js'
import { MemberPool } from '../src/member-pool.js'
import { createPgRouter } from '../src/router.js'

// No database here: members that refuse connections, or a TCP server that never answers.
const SECRET = 'sekret-Unit-77'
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)
let silent: net.Server
let silentPort = 0
const sockets = new Set<net.Socket>()

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled)
  silent = net.createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
  })
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
  silentPort = (silent.address() as AddressInfo).port
})
afterAll(async () => {
  for (const s of sockets) s.destroy()
  await new Promise((r) => silent.close(r))
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

function fakeDiscovery(members: () => DiscoveredMember[], extra: Partial<DiscoveryResult> = {}) {
  const errors = new Emitter<{ source: string; error: Error }>()
  let calls = 0
  let closed = false
  const d: Discovery & { calls: () => number; closed: () => boolean } = {
    discover: async () => {
      calls++
      return { members: members(), source: 'fake', at: performance.now(), ...extra }
    },
    onError: (l) => errors.on(l),
    close: async () => {
      closed = true
    },
    calls: () => calls,
    closed: () => closed,
  }
  return d
}

const primaryAt = (port: number, name = 'p'): DiscoveredMember => ({
  name,
  host: '127.0.0.1',
  port,
  role: 'primary',
  state: 'running',
  lagBytes: null,
  timeline: 1,
  sync: false,
})

const connection = { user: 'app', password: SECRET, database: 'app' }

describe('createPgRouter without a reachable primary', () => {
  it('writes fail with E_FAILOVER_TIMEOUT, ready with E_NO_PRIMARY, check with fail', async () => {
    const confirmFailures: unknown[] = []
    const sub = (m: unknown) => confirmFailures.push(m)
    dc.subscribe(channelNames.confirmFailed, sub)
    const discovery = fakeDiscovery(() => [primaryAt(1)])
    const db = createPgRouter({ discovery, connection, failover: { timeoutMs: 300 } })
    try {
      const err = await db.write('INSERT INTO t VALUES (1)').catch((e: unknown) => e)
      expect(ResilientError.is(err, 'E_FAILOVER_TIMEOUT')).toBe(true)
      const r = await db.ready({ timeoutMs: 100 }).catch((e: unknown) => e)
      expect(ResilientError.is(r, 'E_NO_PRIMARY')).toBe(true)
      // the cause says why: the connection was refused
      expect((r as Error).cause).toMatchObject({ code: 'ECONNREFUSED' })
      expect(await db.check()).toMatchObject({ status: 'fail' })
      expect(confirmFailures.length).toBeGreaterThan(0)
      expect(confirmFailures[0]).toMatchObject({
        member: 'p',
        errorClass: 'not-sent',
        errorCode: 'ECONNREFUSED',
      })
      expect(discovery.calls()).toBeGreaterThan(1) // fast polling while no primary is confirmed
      for (const x of [err, r, confirmFailures, db.stats(), db.topology()]) {
        expect(inspect(x, { depth: 10 })).not.toContain(SECRET)
      }
      expect(inspect(db)).toMatch(/^PgRouter \{ primary: null/)
    } finally {
      dc.unsubscribe(channelNames.confirmFailed, sub)
      await db.close()
    }
    expect(discovery.closed()).toBe(true)
  })

  it('the write queue is bounded: beyond failover.maxQueue, writes fail at once with E_LIMIT (not a timeout); reads waiting for the primary take no place in it', async () => {
    const db = createPgRouter({
      discovery: fakeDiscovery(() => [primaryAt(1)]),
      connection,
      failover: { timeoutMs: 2_000, maxQueue: 2 },
    })
    try {
      // reads that fall back to the primary wait for it too, but not in the write queue
      const reads = [db.read('SELECT 1'), db.read('SELECT 2'), db.read('SELECT 3')].map((p) =>
        p.catch((e: unknown) => e),
      )
      const held = [db.write('SELECT 1'), db.write('SELECT 2')].map((p) => p.catch((e: unknown) => e))
      const t0 = performance.now()
      const third = await db.write('SELECT 3').catch((e: unknown) => e)
      expect(performance.now() - t0).toBeLessThan(500) // at once, no timeout elapsed
      expect(third).toMatchObject({ code: 'E_LIMIT', details: { reason: 'queue-full', maxQueue: 2 } })
      expect(db.stats().queuedWrites).toBe(2)
      held.push(...reads)
      await db.close()
      // closing rejects what was held
      for (const e of await Promise.all(held)) expect(e).toMatchObject({ code: 'E_SHUTTING_DOWN' })
      await expect(db.write('SELECT 4')).rejects.toMatchObject({ code: 'E_SHUTTING_DOWN' })
      expect(await db.check()).toMatchObject({ status: 'fail', output: 'router is closed' })
    } finally {
      await db.close()
    }
  })

  it('an AbortSignal ends a held write with E_ABORTED', async () => {
    const db = createPgRouter({ discovery: fakeDiscovery(() => [primaryAt(1)]), connection })
    try {
      const ac = new AbortController()
      const p = db.write('SELECT 1', [], { signal: ac.signal })
      setTimeout(() => ac.abort(), 20)
      await expect(p).rejects.toMatchObject({ code: 'E_ABORTED' })
    } finally {
      await db.close()
    }
  })

  it('a member that accepts TCP but never answers: bounded by pool.connectTimeoutMs', async () => {
    const db = createPgRouter({
      discovery: fakeDiscovery(() => [primaryAt(silentPort)]),
      connection,
      pool: { connectTimeoutMs: 100 },
      failover: { timeoutMs: 600 },
    })
    try {
      const err = await db.write('SELECT 1').catch((e: unknown) => e)
      expect(ResilientError.is(err, 'E_FAILOVER_TIMEOUT')).toBe(true)
      const read = await db.read('SELECT 1').catch((e: unknown) => e)
      expect(ResilientError.is(read, 'E_FAILOVER_TIMEOUT')).toBe(true)
    } finally {
      await db.close()
    }
  })

  it('several members claiming primary (static split brain): writes are held, check fails naming them', async () => {
    const db = createPgRouter({
      discovery: fakeDiscovery(() => [primaryAt(1, 'a'), primaryAt(2, 'b')], { conflict: ['a', 'b'] }),
      connection,
      failover: { timeoutMs: 200 },
    })
    try {
      await expect(db.write('SELECT 1')).rejects.toMatchObject({ code: 'E_FAILOVER_TIMEOUT' })
      const c = await db.check()
      expect(c.status).toBe('fail')
      expect(c.output).toContain('a, b')
      expect(db.topology().conflict).toEqual(['a', 'b'])
    } finally {
      await db.close()
    }
  })

  it('a bad session token is ignored and reported on a channel, never thrown', async () => {
    const seen: unknown[] = []
    const sub = (m: unknown) => seen.push(m)
    dc.subscribe(channelNames.badToken, sub)
    const db = createPgRouter({ discovery: fakeDiscovery(() => []), connection })
    try {
      const s = db.session('%%%')
      expect(s.token).toBe('')
      expect(db.session('').token).toBe('')
      expect(seen).toEqual([{ reason: 'not-base64url' }])
      expect(db.stats().badTokens).toBe(1)
    } finally {
      dc.unsubscribe(channelNames.badToken, sub)
      await db.close()
    }
  })

  it('transaction options are checked (E_CONFIG), resolveCommit checks its txid', async () => {
    const db = createPgRouter({ discovery: fakeDiscovery(() => []), connection })
    try {
      await expect(
        db.transaction(async () => 1, { isolationLevel: 'snapshot' as never }),
      ).rejects.toMatchObject({
        code: 'E_CONFIG',
        details: { field: 'transaction.isolationLevel' },
      })
      await expect(db.transaction(async () => 1, { readOnly: 'yes' as never })).rejects.toMatchObject({
        code: 'E_CONFIG',
      })
      await expect(db.resolveCommit('12; DROP TABLE x')).rejects.toMatchObject({ code: 'E_CONFIG' })
    } finally {
      await db.close()
    }
  })
})

describe('MemberPool against a server that never answers', () => {
  const make = (max: number) =>
    new MemberPool({
      name: 'silent',
      host: '127.0.0.1',
      port: silentPort,
      connection,
      max,
      idleTimeoutMs: 1_000,
      connectTimeoutMs: 150,
      probeTimeoutMs: 100,
      keepAliveInitialDelayMs: 1_000,
      onIdleError: () => {},
    })

  it('a caller queued behind a full pool gets E_LIMIT (busy), not a failover signal', async () => {
    const mp = make(1)
    const first = mp.acquire('read').catch((e: unknown) => e)
    const second = mp.acquire('read').catch((e: unknown) => e)
    const [a, b] = await Promise.all([first, second])
    expect(ResilientError.is(a, 'E_LIMIT')).toBe(false) // its own connect timed out: the server is sick
    expect(classifyError(a, { phase: 'connect', sent: false, connectionLost: true }).failoverSignal).toBe(
      true,
    )
    expect(b).toMatchObject({ code: 'E_LIMIT', details: { member: 'silent', max: 1 } })
    expect(mp.stats().connectErrors).toBe(2)
    await mp.close(1_000)
  })

  it('drain() rejects connects waiting in that generation at once, as not-sent', async () => {
    const mp = make(1)
    const waiting = [mp.acquire('write'), mp.acquire('write')].map((p) => p.catch((e: unknown) => e))
    await new Promise((r) => setTimeout(r, 20))
    const generation = mp.generation
    mp.drain()
    for (const e of await Promise.all(waiting)) {
      expect(e).toMatchObject({ code: 'E_NO_PRIMARY', details: { reason: 'drained' } })
      expect(classifyError(e, { phase: 'connect', sent: false, connectionLost: true })).toMatchObject({
        class: 'not-sent',
        failoverSignal: false,
      })
    }
    // the next acquire opens a new generation
    const next = mp.acquire('read').catch((e: unknown) => e)
    expect(mp.generation).toBe(generation + 1)
    await next
    await mp.close(1_000)
    await expect(mp.acquire('read')).rejects.toMatchObject({ code: 'E_SHUTTING_DOWN' })
  })
})

describe('the pg.Pool facades', () => {
  it('carry pg.Pool’s expiredCount and options (pool settings only, no password); refuse a Submittable', async () => {
    const db = createPgRouter({
      discovery: fakeDiscovery(() => []),
      connection,
      pool: { max: 7, idleTimeoutMs: 1_234 },
    })
    try {
      for (const pool of [db.primary, db.replicas]) {
        expect(pool.expiredCount).toBe(0)
        expect(pool.options).toMatchObject({ max: 7, idleTimeoutMillis: 1_234, maxLifetimeSeconds: 0 })
        expect(JSON.stringify(pool.options)).not.toContain(SECRET)
        expect(inspect(pool, { depth: 5 })).not.toContain(SECRET)
        expect(Object.isFrozen(pool.options)).toBe(true)
      }
      const cursorLike = { text: 'SELECT 1', submit: () => {} }
      await expect(db.primary.query(cursorLike as never)).rejects.toBeInstanceOf(TypeError)
    } finally {
      await db.close()
    }
  })
})
