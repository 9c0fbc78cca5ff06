import * as diagnostics_channel from 'node:diagnostics_channel'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { type Lab, startLab } from '@resilient/lab'
import {
  channelNames,
  createPgRouter,
  type PgRouter,
  type PgRouterOptions,
  type TimelineRegressionEvent,
} from '@resilient/pg-router'
import pg from 'pg'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

// Replica reads and timelines on a real 3-node cluster: which replicas may serve plain reads
// (lag under session traffic, Patroni's noloadbalance tag, a replica left on an older
// timeline). One lab for the file; each test leaves it with a leader and two streaming replicas.
let lab: Lab
const routers: PgRouter[] = []

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

function router(over: Partial<PgRouterOptions> = {}): PgRouter {
  const db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user: lab.postgres.user, password: lab.postgres.password, database: lab.postgres.database },
    pool: { max: 4 },
    ...over,
  })
  routers.push(db)
  return db
}

/** The ports that `n` plain reads landed on. */
async function readPorts(db: PgRouter, n: number): Promise<Set<number>> {
  const ports = new Set<number>()
  for (let i = 0; i < n; i++) {
    ports.add((await db.read<{ port: number }>('SELECT inet_server_port() AS port')).rows[0]!.port)
  }
  return ports
}

beforeAll(async () => {
  lab = await startLab({ nodes: 3, redis: false })
  await lab.waitForReplicas(2)
  await lab.sql('CREATE TABLE filler (id bigserial PRIMARY KEY, body text)')
})

// Channels are process-wide: close each test's routers so that no other router publishes
// into the next test's observations.
afterEach(async () => {
  await Promise.all(routers.splice(0).map((r) => r.close()))
})

afterAll(async () => {
  await lab?.down()
})

describe('which replicas serve plain reads', () => {
  it('a member tagged noloadbalance in Patroni gets no reads; untagged, it gets them again', async () => {
    const [tagged, other] = await lab.replicas()
    const db = router({ monitor: { intervalMs: 200 } })
    await db.ready({ timeoutMs: 15_000 })
    await until('both replicas serving', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    const configPath = join(lab.baseDir, tagged!.name, 'patroni.yml')
    const original = readFileSync(configPath, 'utf8')
    const setTag = async (on: boolean) => {
      const config = JSON.parse(original) as { tags: Record<string, unknown> }
      config.tags.noloadbalance = on
      writeFileSync(configPath, `${JSON.stringify(config, null, 2)}\n`)
      const res = await fetch(`${tagged!.apiUrl}/reload`, { method: 'POST' })
      expect(res.status).toBeLessThan(300)
      await until(`/cluster to show noloadbalance=${on} on ${tagged!.name}`, async () => {
        const c = await lab.cluster()
        const m = c.members.find((x) => x.name === tagged!.name)
        return Boolean(m?.tags?.noloadbalance) === on
      })
    }
    try {
      await setTag(true)
      await until('the tagged replica out of the read rotation', () =>
        db.topology().replicas.some((r) => r.name === tagged!.name && !r.healthy),
      )
      const ports = await readPorts(db, 20)
      expect(ports.has(tagged!.port)).toBe(false)
      expect(ports.has(other!.port)).toBe(true)
    } finally {
      await setTag(false)
    }
    await until('the untagged replica back', () =>
      db.topology().replicas.some((r) => r.name === tagged!.name && r.healthy),
    )
    expect((await readPorts(db, 20)).has(tagged!.port)).toBe(true)
  })

  it('a replica stuck past maxLagBytes loses plain reads within one steady interval, whatever the session traffic', async () => {
    const [slow, other] = await lab.replicas()
    const intervalMs = 300
    const db = router({
      pool: { max: 16 },
      replicas: { maxLagBytes: 256 * 1024 },
      monitor: { intervalMs },
      session: { maxWaitMs: 200 },
    })
    await db.ready({ timeoutMs: 15_000 })
    await until('both replicas serving', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    // Session traffic: each read right after its own write waits for a replica to replay it,
    // polling the replicas' positions again and again.
    let stop = false
    let sessionReads = 0
    const loops = Array.from({ length: 40 }, async () => {
      const s = db.session()
      while (!stop) {
        await s.write("INSERT INTO filler (body) VALUES ('s')")
        await s.read('SELECT 1')
        sessionReads++
      }
    })
    try {
      await until('session traffic', () => sessionReads > 50)
      await lab.pauseReplay(slow!.name)
      // ~1 MB of WAL the paused replica will not replay
      await db.write("INSERT INTO filler (body) SELECT repeat('x', 500) FROM generate_series(1, 2000)")
      const written = performance.now()
      await until(
        'the stuck replica out of the read rotation',
        () => db.topology().replicas.some((r) => r.name === slow!.name && !r.healthy),
        10_000,
      )
      const excludedAfterMs = performance.now() - written
      // one steady interval (+10% jitter) plus a poll; generous for a loaded 2-core machine
      expect(excludedAfterMs).toBeLessThan(intervalMs * 1.1 + 1_500)
      const ports = await readPorts(db, 20)
      expect(ports.has(slow!.port)).toBe(false)
      expect(ports.has(other!.port)).toBe(true)
    } finally {
      stop = true
      await Promise.all(loops)
      await lab.resumeReplay(slow!.name)
    }
    await until('the replica back in the rotation', () =>
      db.topology().replicas.some((r) => r.name === slow!.name && r.healthy),
    )
  })

  it('a replica left on an older timeline gets no plain reads until it follows the new one', async () => {
    const leader = (await lab.primary())!
    const [stuck, candidate] = await lab.replicas()
    const db = router({ monitor: { intervalMs: 200 } })
    await db.ready({ timeoutMs: 15_000 })
    await until('both replicas serving', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    const excluded: unknown[] = []
    const onExcluded = (m: unknown) => excluded.push(m)
    diagnostics_channel.subscribe(channelNames.replicaExcluded, onExcluded)
    try {
      // Replay paused (maintenance mode on): the stuck replica stays on the old timeline
      // across the switchover; Patroni reports it running, lag a few hundred bytes.
      await lab.pauseReplay(stuck!.name)
      await lab.switchover({ candidate: candidate!.name })
      await until('the router on the new primary', () => db.topology().primary?.name === candidate!.name)
      // Patroni: the new leader on the next timeline, the stuck replica on the old one,
      // running, its lag well within maxLagBytes
      const seen = await until('/cluster to show both timelines', async () => {
        const ms = (await lab.cluster()).members
        const s = ms.find((m) => m.name === stuck!.name)
        const c = ms.find((m) => m.name === candidate!.name)
        return s && c && c.timeline !== undefined && s.timeline !== undefined && c.timeline > s.timeline
          ? s
          : undefined
      })
      expect(seen.state).toBe('running')
      expect(seen.lag).toBeLessThan(64 * 1024)
      await until('the stuck replica marked off the timeline', () =>
        db.topology().replicas.some((r) => r.name === stuck!.name && !r.healthy),
      )
      const ports = await readPorts(db, 30)
      expect(ports.has(stuck!.port)).toBe(false)
      expect(excluded).toContainEqual({ member: stuck!.name, reason: 'timeline' })
    } finally {
      diagnostics_channel.unsubscribe(channelNames.replicaExcluded, onExcluded)
      await lab.resumeReplay()
    }
    // resumed, it follows the new timeline and serves reads again
    await until(
      'the replica on the new timeline, serving',
      () => db.topology().replicas.some((r) => r.name === stuck!.name && r.healthy),
      30_000,
    )
    await lab.startMember(leader.name).catch(() => {}) // the old leader may still be restarting
    await lab.waitForReplicas(2)
  })
})

describe('read-your-writes positions', () => {
  it('with synchronous_commit = off, a token covers the commit record: a resumed session always reads its write', async () => {
    const db = router({
      connection: {
        user: lab.postgres.user,
        password: lab.postgres.password,
        database: lab.postgres.database,
        options: '-c synchronous_commit=off',
      },
      monitor: { intervalMs: 200 },
      session: { maxWaitMs: 1_000 },
    })
    await db.ready({ timeoutMs: 15_000 })
    await until('both replicas serving', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    await db.write('CREATE TABLE ryw_async (id int PRIMARY KEY, at text)')
    let before = 0
    let missed = 0
    for (let i = 0; i < 40; i++) {
      const s = db.session()
      // the insert pointer before the commit record: the token must be past it
      const w = await s.write<{ at: string }>(
        'INSERT INTO ryw_async (id, at) VALUES ($1, pg_current_wal_insert_lsn()::text) RETURNING at',
        [i],
      )
      const [hi, lo] = w.rows[0]!.at.split('/').map((x) => BigInt(`0x${x}`))
      const [thi, tlo] = s.lsn!.split('/').map((x) => BigInt(`0x${x}`))
      if ((thi! << 32n) + tlo! <= (hi! << 32n) + lo!) before++
      const r = await db.session(s.token).read('SELECT count(*)::int AS n FROM ryw_async WHERE id = $1', [i])
      if (r.rows[0].n !== 1) missed++
    }
    expect(missed).toBe(0)
    expect(before).toBe(0)
  })
})

describe('session tokens from outside', () => {
  const SECRET = 'topology-int-test-secret-0123456789'

  it('forged, truncated, far-future, wrong-timeline and wrongly-signed tokens: no read fails or waits session.maxWaitMs; each is counted', async () => {
    const maxWaitMs = 1_000
    const plain = router({ monitor: { intervalMs: 200 }, session: { maxWaitMs } })
    const signed = router({ monitor: { intervalMs: 200 }, session: { maxWaitMs, secret: SECRET } })
    for (const db of [plain, signed]) {
      await db.ready({ timeoutMs: 15_000 })
      await until('both replicas serving', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    }
    const s = plain.session()
    await s.write('SELECT 1') // a real position to forge from
    const real = s.token
    const tl = s.timeline!
    const sw = signed.session()
    await sw.write('SELECT 1')
    const realSignature = sw.token.split('.')[1]!
    const forge = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url')
    const cases: [PgRouter, string, string][] = [
      [plain, 'far future', forge({ v: 2, lsn: 'FFFFFFFF/0', tl })],
      [plain, 'a timeline the cluster never reached', forge({ v: 2, lsn: '0/1000', tl: tl + 5 })],
      [plain, 'truncated', real.slice(0, 10)],
      [plain, 'garbage', 'not a token!'],
      [signed, 'unsigned', real],
      [signed, 'signed with another key', `${real}.${'A'.repeat(22)}`],
      [
        signed,
        'a real signature on a forged payload',
        `${forge({ v: 2, lsn: 'FFFFFFFF/0', tl })}.${realSignature}`,
      ],
    ]
    const before = { plain: plain.stats().tokens, signed: signed.stats().tokens }
    for (const [db, name, token] of cases) {
      const session = db.session(token)
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now()
        const r = await session.read<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')
        const ms = performance.now() - t0
        // a plain read: on a replica, well within maxWaitMs (it used to wait all of it, then the primary)
        expect([name, r.rows[0]!.r]).toEqual([name, true])
        expect([name, ms < maxWaitMs]).toEqual([name, true])
      }
    }
    const p = plain.stats().tokens
    const g = signed.stats().tokens
    expect(p.aheadOfPrimary - before.plain.aheadOfPrimary).toBe(1)
    expect(p.unknownTimeline - before.plain.unknownTimeline).toBe(1)
    expect(p.malformed - before.plain.malformed).toBe(2)
    expect(g.badSignature - before.signed.badSignature).toBe(3)
    expect(plain.stats().badTokens).toBeGreaterThanOrEqual(4)
    // a token of the signed router resumes there, trusted: reads after its write, no poll needed
    const w = signed.session()
    await w.write("INSERT INTO filler (body) VALUES ('signed')")
    expect(w.token).toContain('.')
    const again = signed.session(w.token)
    expect(again.lsn).toBe(w.lsn)
    const n = await again.read<{ n: number }>("SELECT count(*)::int AS n FROM filler WHERE body = 'signed'")
    expect(n.rows[0]!.n).toBe(1)
    expect(JSON.stringify([signed.stats(), await signed.check()])).not.toContain(SECRET)
  })

  it('a token from before a failover is compared through the timeline history, not sent to the primary for ever', async () => {
    const db = router({ monitor: { intervalMs: 200 }, session: { maxWaitMs: 500 } })
    await db.ready({ timeoutMs: 15_000 })
    const s = db.session()
    await s.write("INSERT INTO filler (body) VALUES ('before the switchover')")
    const token = s.token
    const oldTl = s.timeline!
    const [candidate] = await lab.replicas()
    await lab.switchover({ candidate: candidate!.name })
    await until('the new primary measured', () => (db.timelineInfo().timeline ?? 0) > oldTl, 30_000)
    await until('the history of the new timeline', () => db.timelineInfo().history !== null, 30_000)
    const end = db.timelineInfo().history!.find((h) => h.timeline === oldTl)!.endLsn
    await until(
      'a replica on the new timeline, serving',
      () => db.topology().replicas.some((r) => r.healthy),
      30_000,
    )
    const rebasedBefore = db.stats().tokens.rebased
    const resumed = db.session(token)
    const r = await resumed.read<{ r: boolean; n: number }>(
      "SELECT pg_is_in_recovery() AS r, (SELECT count(*)::int FROM filler WHERE body = 'before the switchover') AS n",
    )
    expect(r.rows[0]).toEqual({ r: true, n: 1 }) // a replica, and it has the write
    expect(resumed.timeline).toBe(db.timelineInfo().timeline)
    expect(db.stats().tokens.rebased).toBe(rebasedBefore + 1)
    // a position on the old timeline after it ended: that write did not survive; a plain read
    const lost = Buffer.from(
      JSON.stringify({
        v: 2,
        lsn: `${(end >> 32n).toString(16)}/${((end & 0xffffffffn) + 0x1000n).toString(16)}`,
        tl: oldTl,
      }),
    ).toString('base64url')
    const lostBefore = db.stats().tokens.lostInFailover
    const l = await db.session(lost).read<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')
    expect(l.rows[0]!.r).toBe(true)
    expect(db.stats().tokens.lostInFailover).toBe(lostBefore + 1)
    await lab.waitForReplicas(2)
  })
})

/** An HTTP proxy on port 0 in front of the lab's Patroni endpoints that records when each GET /cluster came. */
async function countingProxy(
  targets: string[],
): Promise<{ url: string; clusterAt: number[]; close: () => Promise<void> }> {
  const clusterAt: number[] = []
  const server: Server = createServer(async (req, res) => {
    if (req.url === '/cluster') clusterAt.push(performance.now())
    for (const t of targets) {
      try {
        const r = await fetch(`${t}${req.url}`, { signal: AbortSignal.timeout(1_000) })
        const body = await r.text()
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' })
        res.end(body)
        return
      } catch {
        // next endpoint
      }
    }
    res.writeHead(502)
    res.end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    clusterAt,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

describe('discovery during a promotion', () => {
  it('a new leader still in recovery is re-checked by SQL every confirmRetryMs; /cluster stays at fastIntervalMs', async () => {
    const [candidate, other] = await lab.replicas()
    const proxy = await countingProxy(lab.patroni.endpoints)
    const fastIntervalMs = 100
    const db = router({
      patroni: { endpoints: [proxy.url] },
      monitor: { fastIntervalMs, confirmRetryMs: 20 },
    })
    const mismatches: number[] = []
    let confirmedAt = 0
    const onMismatch = (m: unknown) => {
      if ((m as { member: string }).member === candidate!.name) mismatches.push(performance.now())
    }
    const onConfirmed = (m: unknown) => {
      if ((m as { member: string }).member === candidate!.name) confirmedAt = performance.now()
    }
    diagnostics_channel.subscribe(channelNames.roleMismatch, onMismatch)
    diagnostics_channel.subscribe(channelNames.confirmed, onConfirmed)

    // A read on each replica that conflicts with replay of an ACCESS EXCLUSIVE lock: replay
    // stops there (max_standby_streaming_delay is 30 s), so the promoted candidate stays in
    // recovery, named leader by Patroni, until these transactions end.
    const holders: pg.Client[] = []
    try {
      await db.ready({ timeoutMs: 15_000 })
      await lab.sql('CREATE TABLE stall (id int)')
      await until('the table on both replicas', async () => {
        for (const r of [candidate!, other!]) {
          const rows = await lab.sql("SELECT to_regclass('stall') IS NOT NULL", r.name)
          if (rows[0]?.[0] !== 't') return undefined
        }
        return true
      })
      for (const r of [candidate!, other!]) {
        const c = new pg.Client({ connectionString: lab.connectionString(r.name) })
        c.on('error', () => {})
        await c.connect()
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ')
        await c.query('SELECT * FROM stall')
        holders.push(c)
      }
      await lab.sql('BEGIN; LOCK TABLE stall IN ACCESS EXCLUSIVE MODE; COMMIT;')
      const switched = lab.switchover({ candidate: candidate!.name })
      await until('the router to find the new leader in recovery', () => mismatches.length > 0, 60_000)
      await new Promise((r) => setTimeout(r, 1_500))
      for (const c of holders) await c.query('COMMIT').catch(() => {})
      await switched
      await until('the candidate confirmed', () => confirmedAt > 0)
      const windowMs = confirmedAt - mismatches[0]!
      const clusterRequests = proxy.clusterAt.filter((t) => t >= mismatches[0]! && t <= confirmedAt).length
      expect(windowMs).toBeGreaterThan(1_400)
      // /cluster at the fast interval (+ one for the tick in flight), not every confirmRetryMs
      expect(clusterRequests).toBeLessThanOrEqual(Math.ceil(windowMs / fastIntervalMs) + 2)
      // while the SQL re-check kept its own short period
      expect(mismatches.length).toBeGreaterThan(clusterRequests * 2)
      expect(db.topology().primary?.name).toBe(candidate!.name)
    } finally {
      diagnostics_channel.unsubscribe(channelNames.roleMismatch, onMismatch)
      diagnostics_channel.unsubscribe(channelNames.confirmed, onConfirmed)
      for (const c of holders) await c.end().catch(() => {})
      await proxy.close()
    }
    await lab.waitForReplicas(2)
  })
})

describe('the cluster going back to a lower timeline (destructive: last)', () => {
  it('writes acknowledged on timeline N+2, then a member of timeline N promoted: an event naming both timelines and the window, check() warns until acknowledged', async () => {
    const db = router({ monitor: { intervalMs: 200 } })
    const events: TimelineRegressionEvent[] = []
    db.onTimelineRegression((e) => events.push(e))
    const published: unknown[] = []
    const onPublished = (m: unknown) => published.push(m)
    diagnostics_channel.subscribe(channelNames.timelineRegression, onPublished)
    try {
      await db.ready({ timeoutMs: 15_000 })
      const leader = (await lab.primary())!
      const [old, mid] = await lab.replicas()
      // `old` stops replaying (maintenance mode: Patroni promotes no one by itself) on timeline N
      await lab.pauseReplay(old!.name)
      const n = Number(
        (await lab.sql('SELECT substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)'))[0]![0]!,
      )
      // two switchovers (allowed to a named candidate in maintenance mode): timeline N+2
      await lab.switchover({ candidate: mid!.name })
      await lab.switchover({ candidate: leader.name })
      await until('the router writing on timeline N+2', () => db.timelineInfo().timeline === n + 2, 30_000)
      const firstWrite = Date.now()
      for (let i = 0; i < 5; i++) await db.write("INSERT INTO filler (body) VALUES ('on N+2')")
      const lastWrite = Date.now()
      // the members of timeline N+2 die; `old` (timeline N) is promoted: timeline N+1
      await lab.stopMember(leader.name)
      await lab.stopMember(mid!.name)
      await until(
        'no leader in /cluster',
        async () => !(await lab.cluster()).members.some((m) => m.role === 'leader'),
        60_000,
      )
      await lab.sql('SELECT pg_promote()', old!.name)
      await until('the regression reported', () => events.length > 0, 60_000)
      expect(events).toEqual([
        {
          member: old!.name,
          timeline: n + 1,
          lostTimeline: n + 2,
          lostMember: leader.name,
          writesFrom: expect.any(Number),
          writesUntil: expect.any(Number),
          detectedAt: expect.any(Number),
        },
      ])
      const e = events[0]!
      expect(e.writesFrom).toBeLessThanOrEqual(lastWrite)
      expect(e.writesUntil).toBeGreaterThanOrEqual(firstWrite)
      expect(published).toEqual([e])
      const c = await db.check()
      expect(c.status).toBe('warn')
      expect(c.output).toContain(`timeline went back from ${n + 2} to ${n + 1} (${old!.name})`)
      // the write went to the new primary meanwhile: it is the primary, the rows of N+2 are gone
      const rows = await db.write<{ n: number }>(
        "SELECT count(*)::int AS n FROM filler WHERE body = 'on N+2'",
      )
      expect(rows.rows[0]!.n).toBe(0)
      expect(db.acknowledgeTimelineRegressions()).toBe(1)
      expect((await db.check()).status).toBe('pass')
    } finally {
      diagnostics_channel.unsubscribe(channelNames.timelineRegression, onPublished)
    }
  })
})
