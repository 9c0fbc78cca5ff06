import * as diagnostics_channel from 'node:diagnostics_channel'
import { ResilientError } from '@resilient/core'
import { type Lab, startLab } from '@resilient/lab'
import { channelNames, createPgRouter, type PgRouter } from '@resilient/pg-router'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// What the caller is told, and what the server is left doing, when a statement times out, is
// aborted, meets a read-only primary, or when the caller's own code throws inside a transaction.
// One 3-node lab in synchronous_mode for the whole file; each test leaves it as it found it.
let lab: Lab
let db: PgRouter
const APP = 'outcome-test'
const suspects: unknown[] = []
const onSuspect = (m: unknown) => suspects.push(m)

function options(extra: Record<string, unknown> = {}) {
  return {
    patroni: { endpoints: lab.patroni.endpoints },
    connection: {
      user: lab.postgres.user,
      password: lab.postgres.password,
      database: lab.postgres.database,
      application_name: APP,
    },
    pool: { max: 4 },
    ...extra,
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== false) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/** Backends of this file's routers running a statement that contains `marker`, on every member. */
async function running(marker: string): Promise<number> {
  let n = 0
  for (const m of lab.members) {
    const rows = await lab.sql(
      `SELECT count(*) FROM pg_stat_activity WHERE application_name = '${APP}' AND state = 'active' AND query LIKE '%${marker}%'`,
      m.name,
    )
    n += Number(rows[0]?.[0] ?? 0)
  }
  return n
}

/** Resolves with the ms it took until no backend runs `marker` (rejects after `limitMs`). */
async function stopsWithin(marker: string, limitMs: number): Promise<number> {
  const t0 = performance.now()
  for (;;) {
    if ((await running(marker)) === 0) return performance.now() - t0
    if (performance.now() - t0 > limitMs)
      throw new Error(`a backend still runs ${marker} after ${limitMs} ms`)
    await sleep(50)
  }
}

beforeAll(async () => {
  diagnostics_channel.subscribe(channelNames.suspect, onSuspect)
  lab = await startLab({ nodes: 3, redis: false, synchronousMode: true })
  await lab.waitForReplicas(2)
  db = createPgRouter(options({ failover: { timeoutMs: 5_000 } }))
  await db.ready({ timeoutMs: 20_000 })
  await db.write('CREATE TABLE outcome (id bigint PRIMARY KEY, note text)')
  await until('2 healthy replicas', () => db.topology().replicas.filter((r) => r.healthy).length === 2)
})

afterAll(async () => {
  await db?.close()
  await lab?.down()
  diagnostics_channel.unsubscribe(channelNames.suspect, onSuspect)
})

describe('a statement that times out or is aborted is cancelled on the server (defect 5)', () => {
  it('a write past pool.queryTimeoutMs: E_COMMIT_UNKNOWN, and its backend stops within 1 s', async () => {
    const short = createPgRouter(options({ pool: { max: 2, queryTimeoutMs: 500 } }))
    try {
      await short.ready({ timeoutMs: 10_000 })
      const err = await short.write('SELECT pg_sleep(20) AS w5a').catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { txid: null } })
      expect((err as Error).cause).toMatchObject({ code: 'E_TIMEOUT' })
      await stopsWithin('w5a', 1_000)
    } finally {
      await short.close()
    }
  })

  it('a read past pool.queryTimeoutMs (retried once, on the other replica): both backends stop within 1 s', async () => {
    const short = createPgRouter(options({ pool: { max: 2, queryTimeoutMs: 500 } }))
    try {
      await short.ready({ timeoutMs: 10_000 })
      await until('2 healthy replicas', () => short.topology().replicas.filter((r) => r.healthy).length === 2)
      await expect(short.read('SELECT pg_sleep(20) AS r5b')).rejects.toMatchObject({ code: 'E_TIMEOUT' })
      await stopsWithin('r5b', 1_000)
    } finally {
      await short.close()
    }
  })

  it('an aborted read: E_ABORTED, and its backend stops within 1 s', async () => {
    const err = await db
      .read('SELECT pg_sleep(20) AS r5c', undefined, { signal: AbortSignal.timeout(300) })
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_ABORTED' })
    await stopsWithin('r5c', 1_000)
  })
})

describe('an abort once the statement or COMMIT was sent is E_COMMIT_UNKNOWN (defect 1)', () => {
  it('an autocommit write aborted while it runs: E_COMMIT_UNKNOWN (txid null), cause E_ABORTED', async () => {
    const err = await db
      .write('INSERT INTO outcome (id, note) SELECT 11, $1 FROM pg_sleep(1)', ['w1a'], {
        signal: AbortSignal.timeout(200),
      })
      .catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'E_COMMIT_UNKNOWN', details: { txid: null } })
    expect((err as Error).cause).toMatchObject({ code: 'E_ABORTED' })
  })

  it('a COMMIT waiting for the sync standby, aborted: E_COMMIT_UNKNOWN with the txid; it did commit', async () => {
    const sync = await lab.waitForSyncStandby()
    await lab.pauseReplay(sync.name)
    try {
      const ac = new AbortController()
      const err = await db
        .transaction(
          async (tx) => {
            await tx.query('SET LOCAL synchronous_commit = remote_apply')
            await tx.query("INSERT INTO outcome (id, note) VALUES (12, 'w1b')")
            // fn is done: COMMIT goes out next and waits for the paused standby to apply it
            setTimeout(() => ac.abort(), 400)
          },
          { signal: ac.signal },
        )
        .catch((e: unknown) => e)
      expect(ResilientError.is(err, 'E_COMMIT_UNKNOWN')).toBe(true)
      const details = (err as ResilientError).details
      expect(details.txid).toMatch(/^[0-9]+$/)
      expect((err as Error).cause).toMatchObject({ code: 'E_ABORTED' })
      // committed locally on the primary (the caller was never told "not executed"): visible once
      // the cancel (sent right after the abort) has ended the backend's wait for the standby
      await until(
        'the row to be visible on the primary',
        async () =>
          (await db.write('SELECT note FROM outcome WHERE id = 12')).rows[0]?.note === 'w1b'
            ? true
            : undefined,
        2_000,
      )
      expect(await db.resolveCommit(details.txid as string)).toBe('committed')
    } finally {
      await lab.resumeReplay(sync.name)
    }
  })
})

describe('a Promise.all of statements in a transaction: each keeps its own deadline (defect 6)', () => {
  it('the second statement is bounded too: E_TIMEOUT near queryTimeoutMs, nothing committed', async () => {
    const short = createPgRouter(options({ pool: { max: 2, queryTimeoutMs: 1_000 } }))
    try {
      await short.ready({ timeoutMs: 10_000 })
      const t0 = performance.now()
      const err = await short
        .transaction(async (tx) => {
          await Promise.all([
            tx.query('SELECT pg_sleep(0.1)'),
            tx.query("INSERT INTO outcome (id, note) SELECT 61, 'd6' FROM pg_sleep(3)"),
          ])
        })
        .catch((e: unknown) => e)
      const ms = performance.now() - t0
      expect(err).toMatchObject({ code: 'E_TIMEOUT' })
      expect(ms).toBeLessThan(2_500) // 1 s deadline + sweep tick + rollback; without it: 3.1 s and a commit
      expect((await db.write('SELECT count(*)::int AS n FROM outcome WHERE id = 61')).rows[0].n).toBe(0)
      await stopsWithin('d6', 1_000)
    } finally {
      await short.close()
    }
  })
})

describe("the caller's own errors inside transaction(fn) pass through untouched (defect 4)", () => {
  it('an error of fn carrying code ECONNRESET: same object, fn run once, no suspicion, pool kept', async () => {
    const before = db.stats().members.find((m) => m.member === db.topology().primary?.name)!
    suspects.length = 0
    let runs = 0
    const mine = Object.assign(new Error('upstream HTTP call reset'), { code: 'ECONNRESET' })
    const err = await db
      .transaction(
        async (tx) => {
          runs++
          await tx.query("INSERT INTO outcome (id, note) VALUES (41, 'd4')")
          throw mine
        },
        { retry: true },
      )
      .catch((e: unknown) => e)
    expect(err).toBe(mine)
    expect(runs).toBe(1)
    expect(suspects).toEqual([])
    const after = db.stats().members.find((m) => m.member === before.member)!
    expect(after.generation).toBe(before.generation) // not drained
    expect(db.topology().primary?.name).toBe(before.member)
    expect((await db.write('SELECT count(*)::int AS n FROM outcome WHERE id = 41')).rows[0].n).toBe(0)
  })
})

describe('read-only transactions (defect 12)', () => {
  it('SERIALIZABLE READ ONLY runs on the primary (a standby cannot run it)', async () => {
    const r = await db.transaction(
      async (tx) => (await tx.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r,
      { readOnly: true, isolationLevel: 'serializable' },
    )
    expect(r).toBe(false)
    // repeatable read stays on a replica
    const rr = await db.transaction(
      async (tx) => (await tx.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r,
      { readOnly: true, isolationLevel: 'repeatable read' },
    )
    expect(rr).toBe(true)
  })

  it('a COMMIT error of a read-only transaction is not swallowed', async () => {
    const err = await db
      .transaction(
        async (tx) => {
          await tx.query("SET LOCAL idle_in_transaction_session_timeout = '100ms'")
          await sleep(600) // the server ends the session while fn idles in the transaction
          return 'result'
        },
        { readOnly: true },
      )
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Error)
    expect(err).toMatchObject({
      code: 'E_NO_PRIMARY',
      details: { committed: false, reason: 'connection-lost' },
    })
  })
})

describe('a maintenance freeze: the primary refuses writes while it is still the primary (defect 3)', () => {
  it('default_transaction_read_only = on (lab.setReadOnly): 25006 to the caller within 2 s, no suspicion, failover or drain, check() unchanged; writes go on at once after', async () => {
    const leader = (await lab.primary())!
    const checkBefore = (await db.check()).status
    const generation = db.stats().members.find((m) => m.member === leader.name)!.generation
    suspects.length = 0
    const failovers: unknown[] = []
    const sub = db.onFailover((e) => failovers.push(e))
    await lab.setReadOnly(true) // Patroni's dynamic configuration: pooled connections too
    try {
      const t0 = performance.now()
      const err = await db.write("INSERT INTO outcome (id, note) VALUES (31, 'd3')").catch((e: unknown) => e)
      expect(performance.now() - t0).toBeLessThan(2_000)
      expect(err).toMatchObject({ code: '25006' }) // the server's own error, as it is
      expect(suspects).toEqual([])
      expect(failovers).toEqual([])
      expect(db.topology().primary?.name).toBe(leader.name)
      expect(db.stats().members.find((m) => m.member === leader.name)!.generation).toBe(generation)
      expect((await db.check()).status).toBe(checkBefore)
      expect(checkBefore).not.toBe('fail')
      // reads go on meanwhile
      await expect(db.read('SELECT 1 AS one')).resolves.toMatchObject({ rows: [{ one: 1 }] })
    } finally {
      await lab.setReadOnly(false)
      sub.dispose()
    }
    const t1 = performance.now()
    await db.write("INSERT INTO outcome (id, note) VALUES (31, 'd3')")
    expect(performance.now() - t1).toBeLessThan(1_000)
    expect(db.stats().retries.write).toBe(0)
  })
})

describe('a member refusing connections for too many clients (53300; defect 15)', () => {
  it('a write waiting for a connection backs off exponentially, not every 100 ms', async () => {
    // a role allowed one connection per server: the router's first one is busy, every other is refused
    await db.write("CREATE ROLE limited LOGIN PASSWORD 'limited-pw' CONNECTION LIMIT 1")
    const lim = createPgRouter({
      ...options(),
      connection: {
        user: 'limited',
        password: 'limited-pw',
        database: lab.postgres.database,
        application_name: APP,
      },
    })
    const retries: Array<{ kind: string; member: string }> = []
    const onRetry = (m: unknown) => retries.push(m as { kind: string; member: string })
    diagnostics_channel.subscribe(channelNames.retry, onRetry)
    try {
      await lim.ready({ timeoutMs: 10_000 })
      const leader = lim.topology().primary!.name
      const hold = lim.transaction(async (tx) => {
        await tx.query('SELECT pg_sleep(3) AS hold15')
      })
      // the hold has the only connection (not the monitor's probe, which would make it wait instead)
      await until('the hold to run', async () => ((await running('hold15')) === 1 ? true : undefined), 3_000)
      const t0 = performance.now()
      const r = await lim.write('SELECT 1 AS one')
      const waited = performance.now() - t0
      await hold
      expect(r.rows).toEqual([{ one: 1 }])
      expect(waited).toBeGreaterThan(1_000) // it did wait for the held connection
      const writeRetries = retries.filter((m) => m.kind === 'write' && m.member === leader).length
      // 100 ms apart it would be ~30 in 3 s; 50 ms doubling to 2 s: at most 7
      expect(writeRetries).toBeGreaterThan(0)
      expect(writeRetries).toBeLessThanOrEqual(8)
    } finally {
      diagnostics_channel.unsubscribe(channelNames.retry, onRetry)
      await lim.close()
    }
  })
})
