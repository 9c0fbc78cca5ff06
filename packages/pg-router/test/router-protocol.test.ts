import * as dc from 'node:diagnostics_channel'
import { Emitter, ResilientError } from '@resilient/core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { channelNames } from '../src/channels.js'
import type { DiscoveredMember, Discovery } from '../src/discovery/types.js'
import { deadlineTickMs, sendCancel } from '../src/member-pool.js'
import { createPgRouter, type PgRouter } from '../src/router.js'
import { type FakeAnswer, type FakePg, startFakePg } from './router-fake-pg.js'

// Protocol edge cases against an in-process fake PostgreSQL on port 0 (no real server).
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)
beforeAll(() => process.on('unhandledRejection', onUnhandled))
afterAll(() => {
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

let fake: FakePg | undefined
let db: PgRouter | undefined
afterEach(async () => {
  await db?.close()
  await fake?.close()
  db = undefined
  fake = undefined
})

function discoveryOf(port: number): Discovery {
  const m: DiscoveredMember = {
    name: 'fake',
    host: '127.0.0.1',
    port,
    role: 'primary',
    state: 'running',
    lagBytes: null,
    timeline: 1,
    sync: false,
  }
  return {
    discover: async () => ({ members: [m], source: 'fake', at: performance.now() }),
    onError: (l) => new Emitter<{ source: string; error: Error }>().on(l),
    close: async () => {},
  }
}

/** A primary that answers the role check and the monitor's probe, and `extra` for the rest. */
function primary(extra: (sql: string) => FakeAnswer | undefined = () => undefined) {
  return (sql: string): FakeAnswer => {
    const e = extra(sql)
    if (e) return e
    if (sql.includes('pg_is_in_recovery() AS r') && !sql.includes('CASE'))
      return { rows: ['f'], type: 'bool' }
    if (sql.includes('CASE WHEN'))
      return { row: { lsn: '0/3000060', f: '000000010000000000000003', r: false } }
    return { rows: ['1'] }
  }
}

const connection = { user: 'u', password: 'p', database: 'd' }

async function until(cond: () => boolean, timeoutMs = 2_000): Promise<void> {
  const end = performance.now() + timeoutMs
  while (!cond()) {
    if (performance.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('a statement that never gets an answer', () => {
  it('is bounded by pool.queryTimeoutMs; its connection is destroyed; a write reports E_COMMIT_UNKNOWN', async () => {
    fake = await startFakePg(primary((sql) => (sql.startsWith('SELECT hang') ? { hang: true } : undefined)))
    db = createPgRouter({
      discovery: discoveryOf(fake.port),
      connection,
      pool: { queryTimeoutMs: 150 },
      failover: { timeoutMs: 2_000 },
    })
    await db.ready({ timeoutMs: 2_000 })
    const closedBefore = fake.closed()
    const err = await db.write('SELECT hang').catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { txid: null } })
    expect((err as Error).cause).toMatchObject({ code: 'E_TIMEOUT' })
    await expect(db.write('SELECT ok')).resolves.toMatchObject({ rows: [{ r: '1' }] })
    await new Promise((r) => setTimeout(r, 50))
    expect(fake.closed()).toBeGreaterThan(closedBefore) // the hung connection was closed
    expect(db.stats().members[0]!.discarded).toBeGreaterThanOrEqual(1)
    // a slow statement is not a failover: the primary stays confirmed
    expect(db.topology().primary?.name).toBe('fake')
  })

  it('a read that times out is retried once, not until the failover deadline', async () => {
    let hangs = 0
    fake = await startFakePg(
      primary((sql) => {
        if (!sql.startsWith('SELECT hang')) return undefined
        hangs++
        return { hang: true }
      }),
    )
    db = createPgRouter({
      discovery: discoveryOf(fake.port),
      connection,
      pool: { queryTimeoutMs: 100 },
      failover: { timeoutMs: 5_000 },
    })
    await db.ready({ timeoutMs: 2_000 })
    await expect(db.read('SELECT hang')).rejects.toMatchObject({ code: 'E_TIMEOUT' })
    expect(hangs).toBe(2)
  })

  it('a short timeout fires on time while a long one is in flight (the sweep follows the shortest)', async () => {
    fake = await startFakePg(primary((sql) => (sql.startsWith('SELECT hang') ? { hang: true } : undefined)))
    const slow = createPgRouter({
      discovery: discoveryOf(fake.port),
      connection,
      pool: { queryTimeoutMs: 60_000 }, // sweep tick 1 s
    })
    db = createPgRouter({
      discovery: discoveryOf(fake.port),
      connection,
      pool: { queryTimeoutMs: 100 }, // tick 5 ms
      failover: { timeoutMs: 2_000 },
    })
    try {
      await slow.ready({ timeoutMs: 2_000 })
      await db.ready({ timeoutMs: 2_000 })
      const ac = new AbortController()
      const long = slow.read('SELECT hang', undefined, { signal: ac.signal }).catch((e: unknown) => e)
      await new Promise((r) => setTimeout(r, 20)) // the 1 s interval is armed
      const t0 = performance.now()
      await expect(db.write('SELECT hang')).rejects.toMatchObject({ code: 'E_COMMIT_UNKNOWN' })
      // 100 ms + at most a 5 ms tick; with the 1 s tick of the long statement it would be ~1 s
      expect(performance.now() - t0).toBeLessThan(700)
      ac.abort()
      expect(await long).toMatchObject({ code: 'E_ABORTED' })
    } finally {
      await slow.close()
    }
  })

  it('the sweep tick is a twentieth of the timeout, between 5 ms and 1 s', () => {
    expect(deadlineTickMs(30_000)).toBe(1_000)
    expect(deadlineTickMs(1_000)).toBe(50)
    expect(deadlineTickMs(100)).toBe(5)
    expect(deadlineTickMs(1)).toBe(5)
  })

  it('a statement cut at its deadline is cancelled on the server (its pid and key) while its connection is open', async () => {
    fake = await startFakePg(primary((sql) => (sql.startsWith('SELECT hang') ? { hang: true } : undefined)))
    db = createPgRouter({
      discovery: discoveryOf(fake.port),
      connection,
      pool: { queryTimeoutMs: 100 },
      failover: { timeoutMs: 2_000 },
    })
    await db.ready({ timeoutMs: 2_000 })
    await expect(db.read('SELECT hang')).rejects.toMatchObject({ code: 'E_TIMEOUT' })
    await until(() => fake!.cancels().length === 2) // the read was retried once: two statements cut
    for (const c of fake.cancels()) expect(c.connectionOpen).toBe(true)
    expect(new Set(fake.cancels().map((c) => c.pid)).size).toBe(2)
  })

  it('an aborted write is cancelled on the server too, and the caller hears E_COMMIT_UNKNOWN (it was sent)', async () => {
    let received = 0
    fake = await startFakePg(
      primary((sql) => {
        if (!sql.startsWith('SELECT hang')) return undefined
        received++
        return { hang: true }
      }),
    )
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    const ac = new AbortController()
    const pending = db.write('SELECT hang', undefined, { signal: ac.signal }).catch((e: unknown) => e)
    await until(() => received === 1) // the server has it
    ac.abort()
    const err = await pending
    expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { txid: null } })
    expect((err as Error).cause).toMatchObject({ code: 'E_ABORTED' })
    await until(() => fake!.cancels().length === 1)
    expect(fake.cancels()[0]!.connectionOpen).toBe(true)
    // aborted before anything was sent: E_ABORTED, nothing to cancel
    const before = new AbortController()
    before.abort()
    await expect(db.write('SELECT 1', undefined, { signal: before.signal })).rejects.toMatchObject({
      code: 'E_ABORTED',
    })
  })

  it('a CancelRequest never waits for an answer, and is bounded when the server cannot be reached', async () => {
    fake = await startFakePg(primary()) // takes the request, never answers or closes
    let t0 = performance.now()
    await sendCancel('127.0.0.1', fake.port, 1, 2, 5_000)
    expect(performance.now() - t0).toBeLessThan(1_000)
    await until(() => fake!.cancels().length === 1)
    expect(fake.cancels()[0]).toMatchObject({ pid: 1, key: 2 })
    // TEST-NET-1: no route, or a connect that never completes: either way done by the bound
    t0 = performance.now()
    await sendCancel('192.0.2.1', 5432, 1, 2, 300)
    expect(performance.now() - t0).toBeLessThan(1_300)
  })

  it('an AbortSignal ends it with E_ABORTED', async () => {
    fake = await startFakePg(primary((sql) => (sql.startsWith('SELECT hang') ? { hang: true } : undefined)))
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    const ac = new AbortController()
    const p = db.read('SELECT hang', undefined, { signal: ac.signal })
    setTimeout(() => ac.abort(), 30)
    await expect(p).rejects.toMatchObject({ code: 'E_ABORTED' })
  })
})

describe('a member that stops answering (frozen: no reset, nothing answered)', () => {
  it('is suspected by its liveness probe: a write in flight gets E_COMMIT_UNKNOWN long before its deadline, new writes are held, none is sent until it answers and is re-confirmed', async () => {
    const states: unknown[] = []
    const s = (m: unknown) => states.push(m)
    dc.subscribe(channelNames.liveness, s)
    let inserts = 0
    try {
      fake = await startFakePg(
        primary((sql) => {
          if (sql.startsWith('INSERT')) inserts++
          return sql.startsWith('SELECT hang') ? { hang: true } : undefined
        }),
      )
      db = createPgRouter({
        discovery: discoveryOf(fake.port),
        connection,
        pool: { queryTimeoutMs: 30_000 },
        monitor: { probeTimeoutMs: 300, livenessIntervalMs: 100 },
        failover: { timeoutMs: 10_000 },
      })
      await db.ready({ timeoutMs: 2_000 })
      await db.write('SELECT 1') // a pooled connection exists
      const inFlight = db.write('SELECT hang').catch((e: unknown) => e)
      await new Promise((r) => setTimeout(r, 50))
      fake.freeze()
      const t0 = performance.now()
      const err = await inFlight
      const ms = performance.now() - t0
      expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN' })
      expect((err as Error).cause).toMatchObject({ code: 'E_TIMEOUT', details: { reason: 'unresponsive' } })
      expect(ms).toBeLessThan(2_000) // 100 + 300 ms here; never the 30 s statement deadline
      expect(states).toContainEqual({ member: 'fake', state: 'unresponsive', reason: 'timeout' })
      expect(db.topology().primary).toBeNull() // writes held, as for a killed primary
      const held = db.write('INSERT INTO t VALUES (1)')
      await new Promise((r) => setTimeout(r, 500))
      expect(db.stats().queuedWrites).toBe(1)
      fake.thaw()
      await expect(held).resolves.toBeDefined() // re-confirmed by SQL, then sent
      expect(inserts).toBe(1)
      expect(states).toContainEqual({ member: 'fake', state: 'alive' })
    } finally {
      dc.unsubscribe(channelNames.liveness, s)
    }
  })
})

describe('the server terminates connections', () => {
  it('57P01 to idle pooled connections: no crash, suspicion, re-confirmed, writes go on', async () => {
    const suspects: unknown[] = []
    const poolErrors: unknown[] = []
    const s1 = (m: unknown) => suspects.push(m)
    const s2 = (m: unknown) => poolErrors.push(m)
    dc.subscribe(channelNames.suspect, s1)
    dc.subscribe(channelNames.poolError, s2)
    try {
      fake = await startFakePg(primary())
      db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
      await db.ready({ timeoutMs: 2_000 })
      await Promise.all([db.write('SELECT 1'), db.write('SELECT 2'), db.write('SELECT 3')])
      const failovers: unknown[] = []
      db.onFailover((e) => failovers.push(e))
      fake.terminateAll('57P01')
      await new Promise((r) => setTimeout(r, 100))
      expect(poolErrors.length).toBeGreaterThan(0)
      expect(poolErrors[0]).toMatchObject({ member: 'fake', sqlState: '57P01' })
      expect(suspects[0]).toMatchObject({ member: 'fake', reason: '57P01' })
      await expect(db.write('SELECT 4')).resolves.toMatchObject({ rows: [{ r: '1' }] })
      expect(db.topology().primary?.name).toBe('fake')
      expect(failovers).toEqual([]) // the same primary came back: not a failover
    } finally {
      dc.unsubscribe(channelNames.suspect, s1)
      dc.unsubscribe(channelNames.poolError, s2)
    }
  })

  it('a FATAL in the middle of a read is retried; in the middle of a write it is E_COMMIT_UNKNOWN', async () => {
    let fatalOnce = 0
    fake = await startFakePg(
      primary((sql) =>
        sql.startsWith('SELECT flaky') && fatalOnce++ % 2 === 0 ? { fatal: '57P01' } : undefined,
      ),
    )
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    await expect(db.read('SELECT flaky')).resolves.toMatchObject({ rows: [{ r: '1' }] })
    const err = await db.write('SELECT flaky').catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { sqlState: '57P01', txid: null } })
    // every other 'flaky' statement is cut off: two idempotent writes meet one cut, retried
    const before = db.stats().retries.write
    for (let i = 0; i < 2; i++) {
      await expect(db.write('SELECT flaky', undefined, { idempotent: true })).resolves.toMatchObject({
        rows: [{ r: '1' }],
      })
    }
    expect(db.stats().retries.write).toBe(before + 1)
  })

  it('25006 on a write from a connection that is now in recovery: a demotion, rerouted (retried) on the primary', async () => {
    let refusals = 0
    let inRecovery = false
    fake = await startFakePg(
      primary((sql) => {
        if (sql.startsWith('INSERT') && refusals++ === 0) {
          inRecovery = true // demoted under the write...
          setTimeout(() => (inRecovery = false), 100) // ...and promoted again: the "new primary"
          return { error: '25006' }
        }
        if (sql.includes('pg_is_in_recovery() AS r') && !sql.includes('CASE'))
          return { rows: [inRecovery ? 't' : 'f'], type: 'bool' }
        return undefined
      }),
    )
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    await expect(db.write('INSERT INTO t VALUES (1)')).resolves.toBeDefined()
    expect(refusals).toBe(2) // refused once, then executed
    expect(db.stats().retries.write).toBe(1)
  })

  it("25006 on a connection that still says pg_is_in_recovery() = false: the database's answer, at once; no suspicion", async () => {
    const suspects: unknown[] = []
    const s = (m: unknown) => suspects.push(m)
    dc.subscribe(channelNames.suspect, s)
    try {
      fake = await startFakePg(primary((sql) => (sql.startsWith('INSERT') ? { error: '25006' } : undefined)))
      db = createPgRouter({ discovery: discoveryOf(fake.port), connection, failover: { timeoutMs: 5_000 } })
      await db.ready({ timeoutMs: 2_000 })
      const generation = db.stats().members[0]!.generation
      const t0 = performance.now()
      const err = await db.write('INSERT INTO t VALUES (1)').catch((e: unknown) => e)
      expect(performance.now() - t0).toBeLessThan(1_000)
      expect(err).toMatchObject({ code: '25006' })
      expect(suspects).toEqual([])
      expect(db.stats().retries.write).toBe(0)
      expect(db.stats().members[0]!.generation).toBe(generation) // not drained
      expect(db.topology().primary?.name).toBe('fake')
      expect(await db.check()).toMatchObject({ status: 'pass' })
    } finally {
      dc.unsubscribe(channelNames.suspect, s)
    }
  })
})

describe('a member whose role check says "in recovery"', () => {
  it('never gets a write: E_FAILOVER_TIMEOUT, role-mismatch published', async () => {
    const mismatches: unknown[] = []
    const s = (m: unknown) => mismatches.push(m)
    dc.subscribe(channelNames.roleMismatch, s)
    let writes = 0
    try {
      fake = await startFakePg((sql): FakeAnswer => {
        if (sql.includes('pg_is_in_recovery')) return { rows: ['t'], type: 'bool' }
        if (sql.startsWith('INSERT')) writes++ // (not the liveness probe's SELECT 1)
        return { rows: ['1'] }
      })
      db = createPgRouter({ discovery: discoveryOf(fake.port), connection, failover: { timeoutMs: 300 } })
      const err = await db.write('INSERT INTO t VALUES (1)').catch((e: unknown) => e)
      expect(ResilientError.is(err, 'E_FAILOVER_TIMEOUT')).toBe(true)
      expect(writes).toBe(0)
      expect(mismatches[0]).toMatchObject({ member: 'fake', expected: 'primary' })
    } finally {
      dc.unsubscribe(channelNames.roleMismatch, s)
    }
  })
})

describe('a write sent down the read path', () => {
  it('25006 from a replica is the caller’s error: not retried, not run on the primary, replica not marked', async () => {
    let primaryInserts = 0
    let replicaInserts = 0
    const suspects: unknown[] = []
    const excluded: unknown[] = []
    const s1 = (m: unknown) => suspects.push(m)
    const s2 = (m: unknown) => excluded.push(m)
    dc.subscribe(channelNames.suspect, s1)
    dc.subscribe(channelNames.replicaExcluded, s2)
    const replicaFake = await startFakePg((sql): FakeAnswer => {
      if (sql.includes('pg_is_in_recovery')) return { rows: ['t'], type: 'bool' }
      if (sql.includes('pg_last_wal_replay_lsn')) return { rows: ['0/3000060'] }
      if (sql.startsWith('INSERT')) {
        replicaInserts++
        return { error: '25006' }
      }
      return { rows: ['r'] }
    })
    try {
      fake = await startFakePg(
        primary((sql) => {
          if (!sql.startsWith('INSERT')) return undefined
          primaryInserts++
          return { rows: ['1'] }
        }),
      )
      const members: DiscoveredMember[] = [
        { ...memberOf('p', fake.port, 'primary') },
        { ...memberOf('r', replicaFake.port, 'replica'), lagBytes: 0 },
      ]
      db = createPgRouter({
        discovery: {
          discover: async () => ({ members, source: 'fake', at: performance.now() }),
          onError: (l) => new Emitter<{ source: string; error: Error }>().on(l),
          close: async () => {},
        },
        connection,
      })
      await db.ready({ timeoutMs: 2_000 })
      await expect(db.read('SELECT 1')).resolves.toMatchObject({ rows: [{ r: 'r' }] }) // a replica serves reads
      for (const attempt of [
        () => db!.read('INSERT INTO t VALUES (1)'),
        () => db!.replicas.query('INSERT INTO t VALUES (1)'),
        () => db!.session().read('INSERT INTO t VALUES (1)'),
      ]) {
        const err = await attempt().catch((e: unknown) => e)
        expect(err).toBeInstanceOf(Error)
        expect(ResilientError.is(err)).toBe(false) // pg's own DatabaseError, as-is
        expect(err).toMatchObject({ code: '25006', severity: 'ERROR' })
      }
      expect(replicaInserts).toBe(3) // once each: no retry on another member
      expect(primaryInserts).toBe(0) // never ran on the primary
      expect(db.stats().retries.read).toBe(0)
      expect(suspects).toEqual([])
      expect(excluded).toEqual([])
      expect(db.topology().replicas).toMatchObject([{ name: 'r', healthy: true }])
      expect(db.topology().primary?.name).toBe('p')
    } finally {
      dc.unsubscribe(channelNames.suspect, s1)
      dc.unsubscribe(channelNames.replicaExcluded, s2)
      await db?.close()
      db = undefined
      await replicaFake.close()
    }
  })
})

function memberOf(name: string, port: number, role: 'primary' | 'replica'): DiscoveredMember {
  return { name, host: '127.0.0.1', port, role, state: 'running', lagBytes: null, timeline: 1, sync: false }
}

describe('read-your-writes across a failover (fake members)', () => {
  it('a replica on an older timeline, "ahead" by LSN, serves no read (plain or session) until it follows the new timeline', async () => {
    // A was the primary (timeline 1, LSN 0/9000000); B is promoted on timeline 2 at a lower
    // LSN; A comes back as a replica that replayed 0/9000000 of timeline 1: it lacks B's writes.
    const state = { aPrimary: true, aTimeline: 1, aReplay: '0/9000000' }
    const served: string[] = []
    const a = await startFakePg((sql): FakeAnswer => {
      if (sql === 'SELECT pg_is_in_recovery() AS r')
        return { rows: [state.aPrimary ? 'f' : 't'], type: 'bool' }
      if (sql.includes('CASE WHEN'))
        return state.aPrimary
          ? { row: { lsn: '0/9000000', f: '000000010000000000000009', r: false } }
          : { row: { lsn: null, f: null, r: true } }
      if (sql.includes('pg_last_wal_replay_lsn')) return { row: { lsn: state.aReplay, tl: null } }
      if (sql.includes('pg_current_wal_insert_lsn() AS l'))
        return { row: { lsn: '0/9000000', f: '000000010000000000000009' } }
      if (sql.startsWith('SELECT v')) {
        served.push('a')
        return { rows: [state.aPrimary ? 'new' : state.aTimeline === 2 ? 'new' : 'old'] }
      }
      return { rows: ['1'] }
    })
    const bState = { primary: false }
    const b = await startFakePg((sql): FakeAnswer => {
      if (sql === 'SELECT pg_is_in_recovery() AS r')
        return { rows: [bState.primary ? 'f' : 't'], type: 'bool' }
      if (sql.includes('CASE WHEN'))
        return { row: { lsn: '0/5000000', f: '000000020000000000000005', r: !bState.primary } }
      if (sql.includes('pg_last_wal_replay_lsn')) return { row: { lsn: '0/9000000', tl: '1' } }
      if (sql.includes('pg_current_wal_insert_lsn() AS l'))
        return { row: { lsn: '0/5000000', f: '000000020000000000000005' } }
      if (sql.startsWith('SELECT v')) {
        served.push('b')
        return { rows: [bState.primary ? 'new' : 'old'] }
      }
      return { rows: ['1'] }
    })
    const members: DiscoveredMember[] = [
      { ...memberOf('a', a.port, 'primary') },
      { ...memberOf('b', b.port, 'replica'), lagBytes: 0 },
    ]
    try {
      db = createPgRouter({
        discovery: {
          discover: async () => ({
            members: members.map((m) => ({ ...m })),
            source: 'fake',
            at: performance.now(),
          }),
          onError: (l) => new Emitter<{ source: string; error: Error }>().on(l),
          close: async () => {},
        },
        connection,
        monitor: { intervalMs: 20, fastIntervalMs: 10 },
        session: { maxWaitMs: 20 },
      })
      await db.ready({ timeoutMs: 2_000 })
      const s0 = db.session()
      await s0.write('INSERT 1')
      expect(s0.timeline).toBe(1)

      // failover: A is demoted (its role check and probe say "in recovery"), B is promoted
      state.aPrimary = false
      bState.primary = true
      members[0] = { ...memberOf('a', a.port, 'replica'), lagBytes: 0, timeline: 1 }
      members[1] = { ...memberOf('b', b.port, 'primary'), timeline: 2 }
      for (let i = 0; i < 200 && db.topology().primary?.name !== 'b'; i++) await sleep(10)
      expect(db.topology().primary?.name).toBe('b')
      // A is on timeline 1, the primary on 2: no reads at all for A until it follows
      await sleep(100)
      expect(db.topology().replicas).toMatchObject([{ name: 'a', healthy: false }])

      const s = db.session()
      await s.write('INSERT 2')
      expect(s.timeline).toBe(2)
      expect(s.lsn).toBe('0/5000000')
      for (let i = 0; i < 20; i++) {
        await sleep(5)
        const resumed = db.session(s.token)
        await expect(resumed.read('SELECT v')).resolves.toMatchObject({ rows: [{ r: 'new' }] })
      }
      expect(served.filter((x) => x === 'a')).toEqual([]) // A has replayed past 0/5000000, but of timeline 1

      // A is rewound and follows timeline 2: now it may serve the session again
      state.aTimeline = 2
      state.aReplay = '0/5000100'
      members[0] = { ...memberOf('a', a.port, 'replica'), lagBytes: 0, timeline: 2 }
      let onA = false
      for (let i = 0; i < 200 && !onA; i++) {
        await sleep(10)
        served.length = 0
        await expect(db.session(s.token).read('SELECT v')).resolves.toMatchObject({ rows: [{ r: 'new' }] })
        onA = served.includes('a')
      }
      expect(onA).toBe(true)
    } finally {
      await db?.close()
      db = undefined
      await a.close()
      await b.close()
    }
  })
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('a transaction whose connection dies before COMMIT was sent', () => {
  /** A primary that logs every statement and treats those starting with `doomed` per `doom`. */
  function logged(doom: () => FakeAnswer | undefined) {
    const log: string[] = []
    const answer = primary((sql) => {
      log.push(sql)
      return sql.startsWith('INSERT doomed') ? doom() : undefined
    })
    return { log, answer }
  }

  it('57P01 mid-transaction: typed E_NO_PRIMARY, committed false, retryable; COMMIT never sent; fn not re-run', async () => {
    const { log, answer } = logged(() => ({ fatal: '57P01' }))
    fake = await startFakePg(answer)
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    let runs = 0
    const err = await db
      .transaction(async (tx) => {
        runs++
        await tx.query('INSERT doomed')
      })
      .catch((e: unknown) => e)
    expect(ResilientError.is(err, 'E_NO_PRIMARY')).toBe(true)
    expect(err).toMatchObject({
      details: {
        reason: 'connection-lost',
        committed: false,
        retryable: true,
        sqlState: '57P01',
        member: 'fake',
      },
    })
    expect(runs).toBe(1)
    expect(log.filter((s) => s === 'COMMIT')).toEqual([])
    // the router goes on: the next transaction commits
    await expect(db.transaction(async (tx) => (await tx.query('SELECT 7')).rows)).resolves.toEqual([
      { r: '1' },
    ])
  })

  it('a dropped socket, then a statement on the dead client ("not queryable", no code): typed, not pg’s raw error', async () => {
    const { log, answer } = logged(() => ({ drop: true }))
    fake = await startFakePg(answer)
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    let inner: unknown
    const err = await db
      .session()
      .transaction(async (tx) => {
        inner = await tx.query('INSERT doomed').catch((e: unknown) => e)
        await tx.query('SELECT after') // pg: the client is not queryable
      })
      .catch((e: unknown) => e)
    expect(ResilientError.is(inner)).toBe(false) // what fn saw is pg's own error...
    expect(ResilientError.is(err, 'E_NO_PRIMARY')).toBe(true) // ...what the caller gets is typed
    expect(err).toMatchObject({ details: { committed: false, retryable: true } })
    expect((err as ResilientError).cause).toBeInstanceOf(Error)
    expect(log.includes('SELECT after')).toBe(false)
    expect(log.filter((s) => s === 'COMMIT')).toEqual([])
  })

  it('{ retry: true } re-runs fn once on a new connection and returns its result', async () => {
    let cuts = 0
    const { log, answer } = logged(() => (cuts++ === 0 ? { fatal: '57P01' } : undefined))
    fake = await startFakePg(answer)
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    const retried: unknown[] = []
    const onRetry = (m: unknown) => retried.push(m)
    dc.subscribe(channelNames.retry, onRetry)
    try {
      const acceptedBefore = fake.accepted()
      let runs = 0
      const out = await db.transaction(
        async (tx) => {
          runs++
          await tx.query('INSERT doomed')
          return `run ${runs}`
        },
        { retry: true },
      )
      expect(out).toBe('run 2')
      expect(runs).toBe(2)
      expect(log.filter((s) => s === 'COMMIT')).toHaveLength(1)
      expect(fake.accepted()).toBeGreaterThan(acceptedBefore) // the second run had a new connection
      expect(db.stats().retries.transaction).toBe(1)
      expect(retried).toContainEqual(
        expect.objectContaining({ kind: 'transaction', errorClass: 'not-committed', attempt: 1 }),
      )
    } finally {
      dc.unsubscribe(channelNames.retry, onRetry)
    }
  })

  it('{ retry: true } never re-runs fn for an SQL error; a bad retry option is E_CONFIG', async () => {
    const { answer } = logged(() => ({ error: '23505' }))
    fake = await startFakePg(answer)
    db = createPgRouter({ discovery: discoveryOf(fake.port), connection })
    await db.ready({ timeoutMs: 2_000 })
    let runs = 0
    const err = await db
      .transaction(
        async (tx) => {
          runs++
          await tx.query('INSERT doomed')
        },
        { retry: true },
      )
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ code: '23505' })
    expect(ResilientError.is(err)).toBe(false)
    expect(runs).toBe(1)
    const bad = await db
      .transaction(async () => 1, { retry: 'yes' } as unknown as { retry: boolean })
      .catch((e: unknown) => e)
    expect(bad).toMatchObject({ code: 'E_CONFIG' })
    expect((bad as Error).message).toContain('transaction.retry')
  })
})
