import * as diagnostics_channel from 'node:diagnostics_channel'
import { inspect } from 'node:util'
import { ResilientError } from '@resilient/core'
import { type Lab, startLab } from '@resilient/lab'
import {
  channelNames,
  createPatroniDiscovery,
  createPgRouter,
  type Discovery,
  type PgRouter,
} from '@resilient/pg-router'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// One 3-node lab for the whole file (about 25 s to boot); each test leaves it as it found it.
let SECRET = ''
let lab: Lab
let db: PgRouter
const channelMessages: unknown[] = []
const onMessage = (m: unknown) => channelMessages.push(m)

function connection() {
  return { user: lab.postgres.user, password: SECRET, database: lab.postgres.database }
}

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

beforeAll(async () => {
  for (const name of Object.values(channelNames)) diagnostics_channel.subscribe(name, onMessage)
  lab = await startLab({ nodes: 3, redis: false })
  SECRET = lab.postgres.password
  expect(SECRET.length).toBeGreaterThan(5)
  await lab.waitForReplicas(2)
  db = createPgRouter({
    // a dead endpoint first: discovery moves on to the live ones
    patroni: { endpoints: ['http://127.0.0.1:1', ...lab.patroni.endpoints], timeoutMs: 500 },
    connection: connection(),
    pool: { max: 4 },
  })
  await db.ready({ timeoutMs: 20_000 })
  await db.write(
    'CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, body text, port int DEFAULT inet_server_port())',
  )
})

afterAll(async () => {
  await db?.close()
  await lab?.down()
  for (const name of Object.values(channelNames)) diagnostics_channel.unsubscribe(name, onMessage)
})

describe('routing on a healthy cluster', () => {
  it('writes go to the confirmed primary, reads to replicas', async () => {
    const leader = (await lab.primary())!
    const t = db.topology()
    expect(t.primary?.name).toBe(leader.name)
    await until('2 healthy replicas', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
    const w = await db.write<{ port: number; r: boolean }>(
      'SELECT inet_server_port() AS port, pg_is_in_recovery() AS r',
    )
    expect(w.rows[0]).toEqual({ port: leader.port, r: false })
    const ports = new Set<number>()
    for (let i = 0; i < 10; i++) {
      const r = await db.read<{ port: number; r: boolean }>(
        'SELECT inet_server_port() AS port, pg_is_in_recovery() AS r',
      )
      expect(r.rows[0]!.r).toBe(true)
      ports.add(r.rows[0]!.port)
    }
    expect(ports.size).toBe(2) // round robin over both replicas
    expect(ports.has(leader.port)).toBe(false)
  })

  it('db.query is pg.Pool-compatible: text, QueryConfig, callback', async () => {
    const a = await db.query('SELECT $1::int AS n', [7])
    expect(a.rows).toEqual([{ n: 7 }])
    const b = await db.query({ text: 'SELECT $1::text AS s', values: ['x'], rowMode: 'array' } as never)
    expect(b.rows).toEqual([['x']])
    const c = await new Promise<unknown>((resolve, reject) =>
      db.query('SELECT 1 AS one', (err, r) => (err ? reject(err) : resolve(r?.rows))),
    )
    expect(c).toEqual([{ one: 1 }])
  })

  it('transactions commit on one pinned connection, roll back on throw, read-only ones use a replica', async () => {
    const txid = await db.transaction(async (tx) => {
      await tx.query('INSERT INTO items (id, body) VALUES (1, $1)', ['one'])
      const r = await tx.query<{ x: string }>('SELECT txid_current()::text AS x')
      return r.rows[0]!.x
    })
    expect(await db.resolveCommit(txid)).toBe('committed')
    await expect(
      db.transaction(async (tx) => {
        await tx.query('INSERT INTO items (id, body) VALUES (2, $1)', ['two'])
        throw new Error('changed my mind')
      }),
    ).rejects.toThrow('changed my mind')
    const rows = await db.write('SELECT id FROM items WHERE id IN (1, 2) ORDER BY id')
    expect(rows.rows).toEqual([{ id: '1' }])
    const ro = await db.transaction(
      async (tx) => (await tx.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r,
      { readOnly: true, isolationLevel: 'repeatable read' },
    )
    expect(ro).toBe(true)
    await expect(db.transaction(async () => 1, { isolationLevel: 'chaos' as never })).rejects.toMatchObject({
      code: 'E_CONFIG',
    })
  })

  it('a session reads its own writes, also when resumed from its token', async () => {
    const s = db.session()
    expect(s.token).toBe('')
    for (let i = 0; i < 20; i++) {
      await s.write('INSERT INTO items (id, body) VALUES ($1, $2)', [100 + i, 'session'])
      const r = await s.read('SELECT count(*)::int AS n FROM items WHERE id = $1', [100 + i])
      expect(r.rows[0].n).toBe(1)
    }
    const resumed = db.session(s.token)
    expect(resumed.lsn).toBe(s.lsn)
    const r = await resumed.read('SELECT count(*)::int AS n FROM items WHERE body = $1', ['session'])
    expect(r.rows[0].n).toBe(20)
    // a bad token is ignored (the session starts empty), never thrown at a request handler
    const before = db.stats().badTokens
    const bad = db.session('not a token!')
    expect(bad.token).toBe('')
    expect(db.stats().badTokens).toBe(before + 1)
  })

  it('the facades work like a pg.Pool', async () => {
    const client = await db.primary.connect()
    try {
      const r = await client.query('SELECT pg_is_in_recovery() AS r')
      expect(r.rows[0].r).toBe(false)
    } finally {
      client.release()
    }
    const rc = await db.replicas.connect()
    try {
      const r = await rc.query('SELECT pg_is_in_recovery() AS r')
      expect(r.rows[0].r).toBe(true)
    } finally {
      rc.release()
    }
    expect((await db.replicas.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }])
    expect(db.primary.totalCount).toBeGreaterThan(0)
    await db.primary.end() // does not close the router
    expect((await db.primary.query('SELECT 2 AS x')).rows).toEqual([{ x: 2 }])
  })

  it('check() passes and works unbound; stats() lists every member', async () => {
    const check = db.check
    const r = await check()
    expect(r.status).toBe('pass')
    expect(r.observedUnit).toBe('ms')
    expect(r.measurement).toBe('discoveryAge')
    expect(r.componentId).toBe(db.topology().primary?.name)
    expect((r.details as { replicasServingReads: number }).replicasServingReads).toBeGreaterThanOrEqual(1)
    const s = db.stats()
    expect(s.members.map((m) => m.member).sort()).toEqual(lab.members.map((m) => m.name).sort())
    expect(s.primary).toBe(db.topology().primary?.name)
  })
})

describe('static hosts (no Patroni)', () => {
  it('finds the primary by pg_is_in_recovery() and routes reads to the others', async () => {
    const leader = (await lab.primary())!
    const st = createPgRouter({
      hosts: lab.members.map((m) => ({ host: m.host, port: m.port })),
      connection: connection(),
      pool: { max: 2 },
    })
    try {
      await st.ready({ timeoutMs: 10_000 })
      expect(st.topology().primary?.name).toBe(`${leader.host}:${leader.port}`)
      const w = await st.write<{ port: number }>('SELECT inet_server_port() AS port')
      expect(w.rows[0]!.port).toBe(leader.port)
      await until('replicas to be measured', () =>
        st.topology().replicas.filter((r) => r.healthy).length === 2 ? true : undefined,
      )
      const r = await st.read<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')
      expect(r.rows[0]!.r).toBe(true)
    } finally {
      await st.close()
    }
  })
})

describe('statements cut off by the server', () => {
  // A trigger that sleeps makes the statement (or COMMIT) last long enough to terminate its
  // backend from another connection while it runs: the client then gets 57P01 mid-statement.
  beforeAll(async () => {
    await db.write(
      'CREATE TABLE slow (id bigint PRIMARY KEY); ' +
        'CREATE FUNCTION slow_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$; ' +
        'CREATE CONSTRAINT TRIGGER slow_at_commit AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED ' +
        'FOR EACH ROW EXECUTE FUNCTION slow_trg()',
    )
  })

  async function terminateSoon(pidOf: () => number | undefined) {
    await until('the backend pid', () => pidOf())
    await new Promise((r) => setTimeout(r, 400))
    await db.write('SELECT pg_terminate_backend($1)', [pidOf()])
  }

  it('COMMIT cut off: E_COMMIT_UNKNOWN carries the txid, resolveCommit answers, writes go on', async () => {
    let pid: number | undefined
    const tx = db
      .transaction(async (t) => {
        pid = (await t.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]!.p
        await t.query('INSERT INTO slow (id) VALUES (1)') // its trigger runs at COMMIT
      })
      .catch((e: unknown) => e)
    await terminateSoon(() => pid)
    const err = await tx
    expect(ResilientError.is(err, 'E_COMMIT_UNKNOWN')).toBe(true)
    const txid = (err as ResilientError).details.txid as string
    expect(txid).toMatch(/^[0-9]+$/)
    expect((err as ResilientError).details.sqlState).toBe('57P01')
    // terminated inside the deferred trigger, before the commit record: aborted
    expect(await db.resolveCommit(txid)).toBe('aborted')
    expect((await db.write('SELECT count(*)::int AS n FROM slow')).rows[0].n).toBe(0)
    // the suspicion (57P01 on the primary) cleared by re-confirming the same primary
    expect(db.topology().primary?.name).toBe((await lab.primary())!.name)
  })

  it('a backend terminated mid-transaction (before COMMIT): typed E_NO_PRIMARY, committed: false; { retry: true } re-runs fn, commits once', async () => {
    await db.write('CREATE TABLE tx_cut (id int PRIMARY KEY)')
    let pid: number | undefined
    const plain = db
      .transaction(async (t) => {
        pid = (await t.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]!.p
        await t.query('INSERT INTO tx_cut (id) VALUES (1)')
        await t.query('SELECT pg_sleep(3)')
      })
      .catch((e: unknown) => e)
    await terminateSoon(() => pid)
    const err = await plain
    expect(ResilientError.is(err, 'E_NO_PRIMARY')).toBe(true)
    expect(err).toMatchObject({
      details: { reason: 'connection-lost', committed: false, retryable: true, sqlState: '57P01' },
    })

    pid = undefined
    let runs = 0
    const retried = db.transaction(
      async (t) => {
        runs++
        await t.query('INSERT INTO tx_cut (id) VALUES (2)')
        if (runs === 1) {
          pid = (await t.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]!.p
          await t.query('SELECT pg_sleep(3)')
        }
        return runs
      },
      { retry: true },
    )
    await terminateSoon(() => pid)
    expect(await retried).toBe(2)
    expect((await db.write('SELECT id FROM tx_cut ORDER BY id')).rows).toEqual([{ id: 2 }])
  })

  it('an autocommit write cut off: E_COMMIT_UNKNOWN without txid; the idempotent one is retried', async () => {
    await db.write('DROP TRIGGER slow_at_commit ON slow')
    await db.write(
      'CREATE TRIGGER slow_now BEFORE INSERT ON slow FOR EACH ROW WHEN (NEW.id < 100) EXECUTE FUNCTION slow_trg()',
    )
    const pidOf = async () =>
      (
        await db.write<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE query LIKE 'INSERT INTO slow%' AND state = 'active'",
        )
      ).rows[0]?.pid
    let pid: number | undefined
    const poll = async () => {
      for (let i = 0; i < 100 && pid === undefined; i++) {
        pid = await pidOf()
        if (pid === undefined) await new Promise((r) => setTimeout(r, 20))
      }
    }
    const plain = db.write('INSERT INTO slow (id) VALUES (2)').catch((e: unknown) => e)
    await poll()
    await terminateSoon(() => pid)
    const err = await plain
    expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { txid: null, sqlState: '57P01' } })

    pid = undefined
    const retried = db.write('INSERT INTO slow (id) VALUES (3) ON CONFLICT DO NOTHING', [], {
      idempotent: true,
    })
    await poll()
    await terminateSoon(() => pid)
    const r = await retried // the second attempt runs its 3 s trigger to the end
    expect(r.command).toBe('INSERT')
    expect((await db.write('SELECT id FROM slow ORDER BY id')).rows).toEqual([{ id: '3' }])
  })
})

describe('degraded members', () => {
  it('a killed replica: its reads move, none fails', async () => {
    const [victim] = await lab.replicas()
    let failures = 0
    let reads = 0
    const seen = new Set<number>()
    let stop = false
    const reader = (async () => {
      while (!stop) {
        try {
          const r = await db.read<{ port: number }>('SELECT inet_server_port() AS port')
          seen.add(r.rows[0]!.port)
          reads++
        } catch {
          failures++
        }
      }
    })()
    await new Promise((r) => setTimeout(r, 300))
    await lab.stopMember(victim!.name)
    await new Promise((r) => setTimeout(r, 1_500))
    seen.clear()
    await new Promise((r) => setTimeout(r, 500))
    stop = true
    await reader
    expect(failures).toBe(0)
    expect(reads).toBeGreaterThan(50)
    expect(seen.has(victim!.port)).toBe(false)
    await lab.startMember(victim!.name)
    await lab.waitForReplicas(2)
  })

  it('a replica lagging past replicas.maxLagBytes gets no reads', async () => {
    const [slow, other] = await lab.replicas()
    const small = createPgRouter({
      patroni: { endpoints: lab.patroni.endpoints },
      connection: connection(),
      pool: { max: 2 },
      replicas: { maxLagBytes: 512 * 1024 },
      monitor: { intervalMs: 200 },
    })
    try {
      await small.ready({ timeoutMs: 10_000 })
      // maintenance mode first (the lab does it), else Patroni resumes replay in its HA loop
      await lab.pauseReplay(slow!.name)
      await small.write(
        "INSERT INTO items (id, body) SELECT g, repeat('x', 500) FROM generate_series(1000, 9000) g",
      )
      // the other replica catches up; the paused one stays behind
      await until('the paused replica to be excluded, the other one not', () => {
        const rs = small.topology().replicas
        return rs.some((r) => r.name === slow!.name && !r.healthy) &&
          rs.some((r) => r.name === other!.name && r.healthy)
          ? true
          : undefined
      })
      const ports = new Set<number>()
      for (let i = 0; i < 10; i++) {
        const r = await small.read<{ port: number }>('SELECT inet_server_port() AS port')
        ports.add(r.rows[0]!.port)
      }
      expect(ports.has(slow!.port)).toBe(false)
      expect(ports.has(other!.port)).toBe(true)
    } finally {
      await lab.resumeReplay(slow!.name)
      await small.close()
    }
  })

  it('all discovery endpoints down: pools keep working and check() says warn', async () => {
    const real = createPatroniDiscovery({ endpoints: lab.patroni.endpoints })
    let down = false
    const flaky: Discovery = {
      discover: (signal) =>
        down
          ? Promise.reject(new ResilientError('E_DISCOVERY', 'no endpoint answered'))
          : real.discover(signal),
      onError: (l) => real.onError(l),
      close: () => real.close(),
    }
    const r2 = createPgRouter({ discovery: flaky, connection: connection(), monitor: { intervalMs: 100 } })
    try {
      await r2.ready({ timeoutMs: 10_000 })
      down = true
      await until('check to warn', async () => ((await r2.check()).status === 'warn' ? true : undefined))
      expect((await r2.write('SELECT 1 AS x')).rows).toEqual([{ x: 1 }])
      expect((await r2.read('SELECT 1 AS x')).rows).toEqual([{ x: 1 }])
      expect(r2.topology().primary).not.toBeNull()
    } finally {
      await r2.close()
    }
  })
})

describe('bad input and secrets', () => {
  it('invalid options throw E_CONFIG naming the field', () => {
    const base = { patroni: { endpoints: ['http://127.0.0.1:8008'] } }
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...base, replicas: { maxLagBytes: -1 } }, 'replicas.maxLagBytes'],
      [{ ...base, pool: { max: 0 } }, 'pool.max'],
      [{ ...base, failover: { timeoutMs: 'soon' } }, 'failover.timeoutMs'],
      [{ ...base, connection: { host: 'x', password: SECRET } }, 'connection.host'],
      [{ patroni: { endpoints: ['http://127.0.0.1:8008', 42] } }, 'patroni.endpoints[1]'],
      [{ ...base, hosts: [{ host: 'a', port: 1 }] }, 'patroni/hosts'],
      [{ connection: { password: SECRET } }, 'patroni'],
      [{ hosts: [{ host: 'a', port: 70_000 }] }, 'hosts[0].port'],
      [{ ...base, replicas: { strategy: SECRET } }, 'replicas.strategy'],
      [{ ...base, typo: 1 }, 'typo'],
    ]
    for (const [options, field] of cases) {
      let caught: unknown
      try {
        createPgRouter(options as never)
      } catch (err) {
        caught = err
      }
      expect(ResilientError.is(caught, 'E_CONFIG'), field).toBe(true)
      expect((caught as Error).message).toContain(field)
      expect(inspect(caught, { depth: 10 })).not.toContain(SECRET)
    }
  })

  it('the password never shows in inspect, stats, errors or channel messages', async () => {
    expect(inspect(db, { depth: 10, showHidden: false })).not.toContain(SECRET)
    expect(JSON.stringify(db.stats())).not.toContain(SECRET)
    expect(inspect(db.topology(), { depth: 10 })).not.toContain(SECRET)
    const err = await db.write('SELECT * FROM no_such_table').catch((e: unknown) => e)
    expect((err as { code?: string }).code).toBe('42P01')
    expect(inspect(err, { depth: 10 })).not.toContain(SECRET)
    // a router whose members are unreachable: connection errors must not carry it either
    const dead = createPgRouter({
      hosts: [{ host: '127.0.0.1', port: 1 }],
      connection: connection(),
      failover: { timeoutMs: 300 },
    })
    const e2 = await dead.write('SELECT 1').catch((e: unknown) => e)
    expect(ResilientError.is(e2, 'E_FAILOVER_TIMEOUT')).toBe(true)
    expect(inspect(e2, { depth: 10 })).not.toContain(SECRET)
    const e3 = await dead.ready({ timeoutMs: 200 }).catch((e: unknown) => e)
    expect(ResilientError.is(e3, 'E_NO_PRIMARY')).toBe(true)
    expect(inspect(e3, { depth: 10 })).not.toContain(SECRET)
    expect(inspect(dead, { depth: 10 })).not.toContain(SECRET)
    await dead.close()
    expect(channelMessages.length).toBeGreaterThan(0)
    expect(inspect(channelMessages, { depth: 10 })).not.toContain(SECRET)
  })
})
