import * as dc from 'node:diagnostics_channel'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { metricsSnapshot } from '@resilient/core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { channelNames } from '../src/channels.js'
import { createPgRouter, type PgRouter, TIMELINE_REGRESSION_METRIC } from '../src/router.js'
import {
  historyOf,
  parseHistoryFile,
  parsePatroniHistory,
  type TimelineRegressionEvent,
  TimelineWatch,
} from '../src/timeline.js'
import { type FakeAnswer, type FakePg, startFakePg } from './router-fake-pg.js'

describe('timeline history', () => {
  it('parses a history file and Patroni GET /history', () => {
    expect(
      parseHistoryFile(
        '1\t0/4027C20\tno recovery target specified\n\n2\t0/5001A10\tno recovery target specified\n',
      ),
    ).toEqual([
      { timeline: 1, endLsn: 0x4027c20n },
      { timeline: 2, endLsn: 0x5001a10n },
    ])
    expect(
      parsePatroniHistory([
        [1, 67271712, 'no recovery target specified', '2026-12-04T17:47:56+00:00', 'pg2'],
      ]),
    ).toEqual([{ timeline: 1, endLsn: 67271712n }])
    for (const bad of ['x\t0/1', '1\tnot-an-lsn', '2\t0/10\n1\t0/20'])
      expect(parseHistoryFile(bad)).toBeNull()
    for (const bad of [
      {},
      [[1]],
      [['1', 5]],
      [[1, -5]],
      [
        [2, 10],
        [1, 20],
      ],
    ])
      expect(parsePatroniHistory(bad)).toBeNull()
  })

  it("a history describes timeline N only when its last switch is N-1's (Patroni's copy lags a loop)", () => {
    const h = [
      { timeline: 1, endLsn: 10n },
      { timeline: 2, endLsn: 20n },
    ]
    expect(historyOf(h, 3)).toBe(h)
    expect(historyOf(h, 4)).toBeNull() // stale: the switch from 3 is missing
    expect(historyOf(h, 2)).toBeNull()
    expect(historyOf([], 1)).toEqual([])
    expect(historyOf(null, 3)).toBeNull()
  })
})

describe('TimelineWatch', () => {
  const w = (name: string) => ({ name, writes: 0 })

  it('reports a confirmed primary on a lower timeline than one written on, once, with the window of writes', () => {
    const watch = new TimelineWatch()
    const a = w('a')
    const b = w('b')
    watch.confirmed(a, 1_000)
    a.writes += 3
    watch.sample(a, 2, 2_000)
    expect(watch.check(a, 2, 2_000)).toBeNull()
    // failover to b on timeline 3: a normal step up
    watch.sample(a, 2, 2_500)
    watch.confirmed(b, 3_000)
    b.writes += 2
    watch.sample(b, 3, 4_000)
    expect(watch.check(b, 3, 4_000)).toBeNull()
    b.writes++
    watch.sample(b, 3, 5_000) // suspected: its writes so far
    // a is primary again, on timeline 2: b's writes on 3 (between 3 s and 5 s) may be lost
    watch.confirmed(a, 6_000)
    watch.sample(a, 2, 6_100)
    const e = watch.check(a, 2, 6_100)
    expect(e).toEqual({
      member: 'a',
      timeline: 2,
      lostTimeline: 3,
      lostMember: 'b',
      writesFrom: 3_000,
      writesUntil: 5_000,
      detectedAt: 6_100,
    })
    expect(watch.check(a, 2, 7_000)).toBeNull() // reported once
    expect(watch.unacknowledged).toEqual([e])
    expect(watch.acknowledge()).toBe(1)
    expect(watch.unacknowledged).toEqual([])
  })

  it('no writes on the higher timeline (a read-only router): no regression', () => {
    const watch = new TimelineWatch()
    const a = w('a')
    const b = w('b')
    watch.confirmed(b, 0)
    watch.sample(b, 3, 1)
    watch.confirmed(a, 2)
    watch.sample(a, 2, 3)
    expect(watch.check(a, 2, 3)).toBeNull()
  })

  it('writes sampled before their timeline was measured wait for it', () => {
    const watch = new TimelineWatch()
    const b = w('b')
    watch.confirmed(b, 100)
    b.writes++
    watch.sample(b, null, 200) // not measured yet: kept
    watch.sample(b, 4, 300)
    const a = w('a')
    watch.confirmed(a, 400)
    expect(watch.check(a, 3, 500)).toMatchObject({ lostTimeline: 4, writesFrom: 100, writesUntil: 300 })
  })
})

// A fake Patroni (port 0) in front of fake PostgreSQL members: the decision logic end to end.
describe('a router seeing the timeline go down (fake Patroni, fake members)', () => {
  let patroni: Server
  let cluster: unknown
  let db: PgRouter | undefined
  const fakes: FakePg[] = []
  beforeAll(async () => {
    patroni = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(
        JSON.stringify(
          req.url === '/patroni' ? { patroni: { scope: 'fake' } } : req.url === '/history' ? [] : cluster,
        ),
      )
    })
    await new Promise<void>((r) => patroni.listen(0, '127.0.0.1', r))
  })
  afterEach(async () => {
    await db?.close()
    db = undefined
    for (const f of fakes.splice(0)) await f.close()
  })
  afterAll(async () => {
    patroni.closeAllConnections()
    await new Promise((r) => patroni.close(r))
  })

  /** A member: primary on `tl` while `state.primary`, else in recovery. */
  async function member(state: { primary: boolean; tl: number }) {
    const f = await startFakePg((sql): FakeAnswer => {
      if (sql === 'SELECT pg_is_in_recovery() AS r')
        return { rows: [state.primary ? 'f' : 't'], type: 'bool' }
      if (sql.includes('CASE WHEN')) {
        const file = `${state.tl.toString(16).padStart(8, '0')}0000000000000005`.toUpperCase()
        return state.primary
          ? { row: { lsn: '0/5000000', f: file, r: false } }
          : { row: { lsn: null, f: null, r: true } }
      }
      if (sql.includes('pg_last_wal_replay_lsn')) return { row: { lsn: '0/5000000', tl: String(state.tl) } }
      if (sql.includes('pg_control_system')) return { row: { s: '7715507029780370728' } }
      return { rows: ['1'] }
    })
    fakes.push(f)
    return f
  }

  const entry = (name: string, port: number, role: string, tl: number) => ({
    name,
    role,
    state: 'running',
    host: '127.0.0.1',
    port,
    timeline: tl,
    ...(role === 'leader' ? {} : { lag: 0 }),
  })

  it('writes on timeline 3, then the old primary back on 2: an event, a channel message, the gauge, check() warns until acknowledged', async () => {
    const a = { primary: true, tl: 2 }
    const b = { primary: false, tl: 2 }
    const fa = await member(a)
    const fb = await member(b)
    const url = `http://127.0.0.1:${(patroni.address() as AddressInfo).port}`
    cluster = { members: [entry('a', fa.port, 'leader', 2), entry('b', fb.port, 'replica', 2)] }
    db = createPgRouter({
      patroni: { endpoints: [url] },
      connection: { user: 'u', password: 'p', database: 'd' },
      monitor: { intervalMs: 30, fastIntervalMs: 10 },
    })
    const events: TimelineRegressionEvent[] = []
    db.onTimelineRegression((e) => events.push(e))
    const published: unknown[] = []
    const onPublished = (m: unknown) => published.push(m)
    dc.subscribe(channelNames.timelineRegression, onPublished)
    try {
      await db.ready({ timeoutMs: 2_000 })
      await db.write('INSERT 1')
      await until(() => db!.timelineInfo().timeline === 2)
      expect(db.timelineInfo()).toMatchObject({ timeline: 2, systemId: '7715507029780370728' })

      // failover: b promoted on timeline 3, a demoted; writes go on, on b
      a.primary = false
      b.primary = true
      b.tl = 3
      cluster = { members: [entry('a', fa.port, 'replica', 2), entry('b', fb.port, 'leader', 3)] }
      await until(() => db!.topology().primary?.name === 'b')
      const beforeWrite = Date.now()
      await db.write('INSERT 2')
      const afterWrite = Date.now()
      await until(() => db!.timelineInfo().timeline === 3)
      await new Promise((r) => setTimeout(r, 100)) // a few polls of b sample its writes
      expect(events).toEqual([])
      expect((await db.check()).status).toBe('pass')

      // the old primary takes the leader key back on timeline 2 (Patroni 3.0.2), b is demoted
      b.primary = false
      a.primary = true
      cluster = { members: [entry('a', fa.port, 'leader', 2), entry('b', fb.port, 'replica', 3)] }
      await until(() => events.length > 0)
      expect(events).toEqual([
        {
          member: 'a',
          timeline: 2,
          lostTimeline: 3,
          lostMember: 'b',
          writesFrom: expect.any(Number),
          writesUntil: expect.any(Number),
          detectedAt: expect.any(Number),
        },
      ])
      const e = events[0]!
      // the window holds the write's acknowledgement
      expect(e.writesFrom).toBeLessThanOrEqual(afterWrite)
      expect(e.writesUntil).toBeGreaterThanOrEqual(beforeWrite)
      expect(e.writesUntil).toBeLessThanOrEqual(e.detectedAt)
      expect(published).toEqual([e])
      const c = await db.check()
      expect(c.status).toBe('warn')
      expect(c.output).toContain('timeline went back from 3 to 2 (a)')
      expect(c.output).toContain(new Date(e.writesFrom).toISOString())
      expect(db.timelineRegressions()).toEqual([e])
      expect(metricsSnapshot().gauges.filter((g) => g.name === TIMELINE_REGRESSION_METRIC)).toEqual([
        {
          name: TIMELINE_REGRESSION_METRIC,
          value: 1,
          attributes: {
            'pg_router.timeline.lost': 3,
            'pg_router.timeline.current': 2,
            'pg_router.member': 'a',
            'pg_router.writes.from': Math.floor(e.writesFrom / 1000),
            'pg_router.writes.until': Math.ceil(e.writesUntil / 1000),
          },
        },
      ])
      // still reported on later polls, but detected only once
      await new Promise((r) => setTimeout(r, 100))
      expect(events).toHaveLength(1)
      expect((await db.check()).status).toBe('warn')

      expect(db.acknowledgeTimelineRegressions()).toBe(1)
      expect((await db.check()).status).toBe('pass')
      expect(db.timelineRegressions()).toEqual([])
      expect(metricsSnapshot().gauges.filter((g) => g.name === TIMELINE_REGRESSION_METRIC)).toEqual([])
    } finally {
      dc.unsubscribe(channelNames.timelineRegression, onPublished)
    }
  })
})

async function until(cond: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = performance.now() + timeoutMs
  while (!cond()) {
    if (performance.now() > end) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 5))
  }
}
