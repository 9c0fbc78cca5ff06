import { ResilientError } from '@resilient/core'
import { type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type FailoverEvent, type PgRouter } from '@resilient/pg-router'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

/**
 * kill -9 of the primary (Patroni + postmaster) under steady load, `synchronous_mode: true`,
 * repeated KILLS times (default 5; the killed member is restarted in between), then a
 * planned switchover. Prints the distribution of "new leader visible in /cluster (polled
 * every 20 ms here) -> first write acknowledged by it".
 */
const KILLS = Number(process.env.PG_ROUTER_KILLS ?? 5)
const WRITERS = 4
const READERS = 2

let lab: Lab
let db: PgRouter
let nextId = 1
const failovers: FailoverEvent[] = []
const primaries: Array<string | null> = []

interface Ack {
  id: number
  port: number
  at: number
}

interface Load {
  acks: Ack[]
  unknown: number[]
  timedOut: number[]
  otherErrors: unknown[]
  reads: number
  readErrors: unknown[]
  stop(): Promise<void>
}

function startLoad(): Load {
  let stopped = false
  const load: Load = {
    acks: [],
    unknown: [],
    timedOut: [],
    otherErrors: [],
    reads: 0,
    readErrors: [],
    stop: async () => {
      stopped = true
      await Promise.all(loops)
    },
  }
  const writer = async () => {
    while (!stopped) {
      const id = nextId++
      try {
        const r = await db.write<{ port: number }>('INSERT INTO acks (id) VALUES ($1) RETURNING port', [id])
        load.acks.push({ id, port: r.rows[0]!.port, at: performance.now() })
      } catch (err) {
        if (ResilientError.is(err, 'E_SHUTTING_DOWN')) break
        if (ResilientError.is(err, 'E_COMMIT_UNKNOWN')) load.unknown.push(id)
        else if (ResilientError.is(err, 'E_FAILOVER_TIMEOUT')) load.timedOut.push(id)
        else load.otherErrors.push(err)
      }
    }
  }
  const reader = async () => {
    while (!stopped) {
      try {
        await db.read('SELECT count(*) FROM acks')
        load.reads++
      } catch (err) {
        if (ResilientError.is(err, 'E_SHUTTING_DOWN')) break
        load.readErrors.push(err)
      }
      await new Promise((r) => setTimeout(r, 2))
    }
  }
  const loops = [...Array.from({ length: WRITERS }, writer), ...Array.from({ length: READERS }, reader)]
  return load
}

/** The first time /cluster (any live endpoint, polled every 20 ms) shows a leader other than `old`. */
async function waitForNewLeaderInCluster(old: string, timeoutMs = 45_000) {
  const end = performance.now() + timeoutMs
  while (performance.now() < end) {
    for (const url of lab.patroni.endpoints) {
      try {
        const res = await fetch(`${url}/cluster`, { signal: AbortSignal.timeout(200) })
        const body = (await res.json()) as { members: Array<{ name: string; role: string; port: number }> }
        const leader = body.members.find((m) => m.role === 'leader')
        if (leader && leader.name !== old)
          return { name: leader.name, port: leader.port, at: performance.now() }
        break
      } catch {
        // that endpoint is the dead one: try the next
      }
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error('no new leader in /cluster')
}

async function until<T>(what: string, fn: () => T | undefined, timeoutMs: number): Promise<T> {
  const end = performance.now() + timeoutMs
  for (;;) {
    const v = fn()
    if (v !== undefined) return v
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/**
 * Patroni 3.0.2 in synchronous mode only promotes the sync standby, and only when no other
 * replica has more WAL. Killing the leader right after it moved the sync role to a member
 * that just rejoined leaves both replicas refusing to promote ("not the healthiest node"):
 * wait until the sync standby has been the same, with lag 0, for 4 s before the next kill.
 */
async function waitForStableSync(timeoutMs = 60_000) {
  const end = performance.now() + timeoutMs
  let name = ''
  let since = performance.now()
  while (performance.now() < end) {
    const c = await lab.cluster().catch(() => undefined)
    const sync = c?.members.filter((m) => m.role === 'sync_standby' && m.state === 'running' && m.lag === 0)
    const current = sync?.length === 1 ? sync[0]!.name : ''
    if (current !== name) {
      name = current
      since = performance.now()
    } else if (current && performance.now() - since >= 4_000) return
    await new Promise((r) => setTimeout(r, 250))
  }
  throw new Error('the sync standby did not settle')
}

/** Every acknowledged row is on the current primary, written where the test saw it written, once. */
async function verify(load: Load) {
  expect(load.otherErrors).toEqual([])
  expect(load.readErrors).toEqual([])
  const ids = load.acks.map((a) => a.id)
  const rows = await db.write<{ id: string; port: number; rec: boolean }>(
    'SELECT id, port, rec FROM acks WHERE id = ANY($1::bigint[])',
    [[...ids, ...load.unknown, ...load.timedOut]],
  )
  const byId = new Map(rows.rows.map((r) => [Number(r.id), r]))
  for (const a of load.acks) {
    const row = byId.get(a.id)
    expect(row, `acknowledged row ${a.id}`).toBeDefined()
    expect(row!.port).toBe(a.port) // it was written where RETURNING said
    expect(row!.rec).toBe(false) // ... by a server that was not in recovery
  }
  // E_FAILOVER_TIMEOUT means "not executed": none of those rows may exist
  for (const id of load.timedOut) expect(byId.has(id), `timed-out row ${id}`).toBe(false)
  return rows.rows.length
}

beforeAll(async () => {
  lab = await startLab({ nodes: 3, synchronousMode: true, redis: false })
  await lab.waitForReplicas(2)
  await waitForStableSync()
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user: lab.postgres.user, password: lab.postgres.password, database: lab.postgres.database },
    pool: { max: 6, connectTimeoutMs: 1_000 },
    failover: { timeoutMs: 30_000 },
  })
  db.onFailover((e) => failovers.push(e))
  db.onTopologyChange((t) => primaries.push(t.primary?.name ?? null))
  await db.ready({ timeoutMs: 20_000 })
  await db.write(
    'CREATE TABLE acks (id bigint PRIMARY KEY, port int NOT NULL DEFAULT inet_server_port(), ' +
      'rec boolean NOT NULL DEFAULT pg_is_in_recovery())',
  )
  // a replica within maxLagBytes may not have replayed the CREATE yet: the readers start at once
  for (const m of lab.members) {
    for (let i = 0; (await lab.sql("SELECT to_regclass('acks') IS NOT NULL", m.name))[0]?.[0] !== 't'; i++) {
      if (i > 200) throw new Error(`acks never appeared on ${m.name}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }
})

afterAll(async () => {
  await db?.close()
  await lab?.down()
})

describe('failover under load (synchronous_mode)', () => {
  it(`kill -9 of the primary, ${KILLS} times: acknowledged writes survive, reads never fail`, async () => {
    const delays: number[] = []
    for (let run = 1; run <= KILLS; run++) {
      const before = failovers.length
      const topoStart = primaries.length
      const load = startLoad()
      let stopped = false
      try {
        await new Promise((r) => setTimeout(r, 1_000))
        const old = (await lab.primary())!
        const killedAt = performance.now()
        await lab.killPrimary()
        const seen = await waitForNewLeaderInCluster(old.name)
        const first = await until(
          'the first write acknowledged by the new primary',
          () => load.acks.find((a) => a.port === seen.port && a.at >= killedAt),
          30_000,
        )
        await new Promise((r) => setTimeout(r, 500))
        await load.stop()
        stopped = true
        const delay = first.at - seen.at
        delays.push(delay)
        const rows = await verify(load)
        // rows written once each: at most every acknowledged one plus those whose outcome was unknown
        expect(rows).toBeGreaterThanOrEqual(load.acks.length)
        expect(rows).toBeLessThanOrEqual(load.acks.length + load.unknown.length)
        expect(load.reads).toBeGreaterThan(0)
        expect(db.topology().primary?.name).toBe(seen.name)
        await until('the onFailover event', () => (failovers.length > before ? true : undefined), 15_000)
        const ev = failovers.at(-1)!
        console.log(
          `kill ${run}: ${old.name} -> ${seen.name}; leader visible after ${Math.round(seen.at - killedAt)} ms; ` +
            `first write on it ${Math.round(delay)} ms later; acks ${load.acks.length}, unknown ${load.unknown.length}, ` +
            `timed out ${load.timedOut.length}, reads ${load.reads}; event held ${ev.durations.heldMs} ms, ` +
            `confirm ${ev.durations.confirmMs} ms, first write ${ev.durations.firstWriteMs} ms`,
        )
        expect(ev.to).toBe(seen.name)
        // onTopologyChange saw the writer go (null) and the new one come
        const seenNow = primaries.slice(topoStart)
        const gone = seenNow.indexOf(null)
        expect(gone).toBeGreaterThanOrEqual(0)
        expect(seenNow.slice(gone)).toContain(seen.name)
        await lab.startMember(old.name)
        await lab.waitForReplicas(2)
        await waitForStableSync()
      } finally {
        if (!stopped) await load.stop()
      }
    }
    const sorted = [...delays].sort((a, b) => a - b)
    const median = sorted[Math.floor(sorted.length / 2)]!
    console.log(
      `new leader visible in /cluster -> first acknowledged write (ms), ${KILLS} kills: ` +
        `min ${Math.round(sorted[0]!)} median ${Math.round(median)} max ${Math.round(sorted.at(-1)!)} ` +
        `[${delays.map((d) => Math.round(d)).join(', ')}]`,
    )
    // Generous bound: the target is <= 300 ms; a loaded 2-core CI box must not flake.
    for (const d of delays) expect(d).toBeLessThan(3_000)
  })

  it('planned switchover: no read fails; each write succeeds or fails with E_FAILOVER_TIMEOUT / E_COMMIT_UNKNOWN', async () => {
    const load = startLoad()
    await new Promise((r) => setTimeout(r, 500))
    const old = (await lab.primary())!
    const next = await lab.switchover()
    await until('a write on the new primary', () => load.acks.find((a) => a.port === next.port), 30_000)
    await new Promise((r) => setTimeout(r, 500))
    await load.stop()
    const rows = await verify(load)
    expect(rows).toBeLessThanOrEqual(load.acks.length + load.unknown.length)
    expect(db.topology().primary?.name).toBe(next.name)
    console.log(
      `switchover ${old!.name} -> ${next.name}: acks ${load.acks.length}, unknown ${load.unknown.length}, ` +
        `timed out ${load.timedOut.length}, reads ${load.reads}, read errors ${load.readErrors.length}`,
    )
  })
})
