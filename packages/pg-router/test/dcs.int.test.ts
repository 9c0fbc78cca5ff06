import { type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// etcd (Patroni's DCS) frozen for 20 s. Without failsafe_mode Patroni demotes the primary
// (PostgreSQL restarted read-only) once it cannot renew the leader key; with it, the leader
// stays primary while every member answers its POST /failsafe. GET /cluster fails meanwhile.
// Either way: reads keep succeeding; writes are held and then fail with E_FAILOVER_TIMEOUT
// (never a raw error) or go on; once a primary is writable again, writes resume within 1 s.
const FREEZE_MS = 20_000

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Outcome {
  acked: number
  codes: Record<string, number>
  reads: number
  readErrors: unknown[]
  /** thaw -> a member answered pg_is_in_recovery() = false and took a write (plain pg). */
  writableMs: number
  /** that moment -> the router's first acknowledged write after it. */
  resumeMs: number
  /** Writes acknowledged while etcd was frozen. */
  ackedDuringFreeze: number
}

async function scenario(lab: Lab, db: PgRouter): Promise<Outcome> {
  await db.write('CREATE TABLE IF NOT EXISTS dcs_acks (id bigint PRIMARY KEY)')
  await sleep(500)
  let id = 0
  let stop = false
  const acks: number[] = []
  const codes: Record<string, number> = {}
  const readErrors: unknown[] = []
  let reads = 0
  const writer = async () => {
    while (!stop) {
      try {
        await db.write('INSERT INTO dcs_acks (id) VALUES ($1)', [++id])
        acks.push(performance.now())
      } catch (err) {
        const code = (err as { code?: string }).code
        const key = typeof code === 'string' && code.startsWith('E_') ? code : `raw:${code}`
        codes[key] = (codes[key] ?? 0) + 1
        await sleep(10)
      }
    }
  }
  const reader = async () => {
    while (!stop) {
      try {
        await db.read('SELECT 1')
        reads++
      } catch (err) {
        readErrors.push(err)
      }
      await sleep(5)
    }
  }
  const load = [writer(), writer(), reader(), reader()]
  // a plain client per member, to see when a primary is writable again, independently of the router
  const clients = lab.members.map((m) => ({ m, c: null as pg.Client | null }))
  async function writableNow(): Promise<boolean> {
    for (const x of clients) {
      try {
        if (!x.c) {
          const c = new pg.Client({
            connectionString: lab.connectionString(x.m.name),
            connectionTimeoutMillis: 500,
          })
          c.on('error', () => {})
          await c.connect()
          x.c = c
        }
        const r = await x.c.query<{ r: boolean }>({
          text: 'SELECT pg_is_in_recovery() AS r',
          query_timeout: 500,
        } as never)
        if (r.rows[0]?.r === false) {
          await x.c.query({ text: 'CREATE TEMP TABLE IF NOT EXISTS w (x int)', query_timeout: 500 } as never)
          return true
        }
      } catch {
        await x.c?.end().catch(() => {})
        x.c = null
      }
    }
    return false
  }
  try {
    await sleep(2_000)
    const frozenAt = performance.now()
    await lab.freezeDcs()
    await sleep(FREEZE_MS)
    const thawedAt = performance.now()
    await lab.thawDcs()
    let writableAt = 0
    for (const end = performance.now() + 90_000; performance.now() < end; ) {
      if (await writableNow()) {
        writableAt = performance.now()
        break
      }
      await sleep(50)
    }
    expect(writableAt, 'a primary writable again after the thaw').toBeGreaterThan(0)
    const firstAfter = await (async () => {
      for (const end = performance.now() + 30_000; performance.now() < end; ) {
        const a = acks.find((t) => t >= writableAt)
        if (a !== undefined) return a
        await sleep(20)
      }
      return undefined
    })()
    expect(firstAfter, 'a write acknowledged after the primary is writable').toBeDefined()
    await sleep(1_000)
    return {
      acked: acks.length,
      codes,
      reads,
      readErrors,
      writableMs: Math.round(writableAt - thawedAt),
      resumeMs: Math.round(firstAfter! - writableAt),
      ackedDuringFreeze: acks.filter((t) => t > frozenAt && t < thawedAt).length,
    }
  } finally {
    stop = true
    await Promise.all(load)
    for (const x of clients) await x.c?.end().catch(() => {})
    await lab.thawDcs().catch(() => {})
  }
}

function routerFor(lab: Lab): PgRouter {
  return createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user: lab.postgres.user, password: lab.postgres.password, database: lab.postgres.database },
    // held writes must fail within the 20 s freeze (the default is 30 s)
    failover: { timeoutMs: 5_000 },
  })
}

describe('etcd frozen for 20 s, Patroni without failsafe_mode (the primary is demoted)', () => {
  let lab: Lab
  let db: PgRouter
  beforeAll(async () => {
    lab = await startLab({ nodes: 3, redis: false })
    await lab.waitForReplicas(2)
    db = routerFor(lab)
    await db.ready({ timeoutMs: 30_000 })
  })
  afterAll(async () => {
    await db?.close()
    await lab?.down()
  })

  it('reads keep succeeding; writes are held then E_FAILOVER_TIMEOUT, never raw; they resume within 1 s of a writable primary', async () => {
    const o = await scenario(lab, db)
    console.log(`etcd frozen, no failsafe: ${JSON.stringify({ ...o, readErrors: o.readErrors.length })}`)
    expect(o.readErrors).toEqual([])
    expect(Object.keys(o.codes).filter((k) => k.startsWith('raw:'))).toEqual([])
    for (const k of Object.keys(o.codes)) expect(['E_FAILOVER_TIMEOUT', 'E_COMMIT_UNKNOWN']).toContain(k)
    expect(o.codes.E_FAILOVER_TIMEOUT ?? 0).toBeGreaterThan(0) // writes were held, then refused
    expect(o.resumeMs).toBeLessThan(1_500) // target 1 s; margin for a loaded machine
  })
})

describe('etcd frozen for 20 s, Patroni with failsafe_mode: true (the primary stays)', () => {
  let lab: Lab
  let db: PgRouter
  beforeAll(async () => {
    lab = await startLab({ nodes: 3, redis: false, failsafeMode: true })
    await lab.waitForReplicas(2)
    db = routerFor(lab)
    await db.ready({ timeoutMs: 30_000 })
  })
  afterAll(async () => {
    await db?.close()
    await lab?.down()
  })

  it('reads keep succeeding; writes go on (never a raw error) while discovery fails; check() never fails', async () => {
    let checkDuring: string | undefined
    const probe = (async () => {
      await sleep(2_000 + FREEZE_MS / 2)
      checkDuring = (await db.check()).status
    })()
    const o = await scenario(lab, db)
    await probe
    console.log(
      `etcd frozen, failsafe: ${JSON.stringify({ ...o, readErrors: o.readErrors.length, checkDuring })}`,
    )
    expect(o.readErrors).toEqual([])
    expect(Object.keys(o.codes).filter((k) => k.startsWith('raw:'))).toEqual([])
    for (const k of Object.keys(o.codes)) expect(['E_FAILOVER_TIMEOUT', 'E_COMMIT_UNKNOWN']).toContain(k)
    // the primary works (warn while /cluster fails; Patroni's failsafe answers it at times): never fail
    expect(['pass', 'warn']).toContain(checkDuring)
    expect(o.ackedDuringFreeze).toBeGreaterThan(0)
    expect(o.resumeMs).toBeLessThan(1_500)
  })
})
