import { type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type PgRouter, type Session } from '@resilient/pg-router'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// Read-your-writes through a failover (about 60-90 s): sessions write and read back at once
// while the primary is killed (kill -9), a replica takes over on a new timeline, and the old
// primary comes back as a replica. At the end, replay is paused on every replica (maintenance
// mode first: Patroni 3 resumes paused replay on PostgreSQL 14+ otherwise), so a session read
// that a replica serves without having replayed the write would miss it.
let lab: Lab
let db: PgRouter
let paused: string[] = []

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 60_000) {
  const until = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

beforeAll(async () => {
  // synchronous_mode: an acknowledged write is never lost, so any miss is a read-your-writes failure
  // (with async replication, a write the dying primary acknowledged can vanish: FACTS.md).
  lab = await startLab({ nodes: 3, redis: false, synchronousMode: true })
  await lab.waitForReplicas(2)
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: lab.postgres,
    pool: { max: 4 },
    session: { maxWaitMs: 50 },
  })
  await db.ready()
  await db.write('CREATE TABLE ryw_failover (id serial PRIMARY KEY, label text NOT NULL)')
}, 120_000)

afterAll(async () => {
  if (lab && paused.length) await lab.resumeReplay().catch(() => {})
  await db?.close()
  await lab?.down()
}, 60_000)

describe('read-your-writes across a failover', () => {
  it('a session always reads its own write: kill -9 of the primary, new timeline, old primary back as a replica', async () => {
    let stop = false
    const violations: string[] = []
    let checked = 0
    let failed = 0
    const timelines = new Set<number | null>()

    // Each loop is a stateless client: it resumes its session from the token before each read.
    async function client(id: number) {
      let s: Session = db.session()
      for (let i = 0; !stop; i++) {
        const label = `c${id}-${i}`
        let rowId: number
        try {
          const r = await s.write<{ id: number }>(
            'INSERT INTO ryw_failover (label) VALUES ($1) RETURNING id',
            [label],
          )
          rowId = r.rows[0]!.id
        } catch {
          failed++ // during the failover: outcome unknown or no primary yet; nothing to read back
          await sleep(50)
          continue
        }
        timelines.add(s.timeline)
        s = db.session(s.token)
        try {
          const r = await s.read<{ label: string }>('SELECT label FROM ryw_failover WHERE id = $1', [rowId])
          checked++
          if (r.rows[0]?.label !== label) violations.push(`${label} (id ${rowId}, token ${s.token})`)
        } catch {
          failed++
        }
      }
    }
    const clients = [1, 2, 3, 4].map(client)

    await sleep(1_000)
    const before = db.topology().primary?.timeline ?? null
    const old = await lab.killPrimary()
    const next = await lab.waitForPrimary({ not: old, timeoutMs: 60_000 })
    await waitUntil('the router to confirm the new primary', () => db.topology().primary?.name === next.name)
    await sleep(1_000)
    await lab.startMember(old, { timeoutMs: 90_000 })
    await lab.waitForMember(old, { role: 'replica', timeoutMs: 90_000 })
    await waitUntil('the router to read from both replicas', () => {
      const t = db.topology()
      return t.replicas.length === 2 && t.replicas.every((r) => r.healthy)
    })
    await sleep(1_000)

    // Replay stops everywhere: only a replica that truly replayed a write may serve its read.
    // (the lab turns Patroni maintenance mode on first, else Patroni resumes replay)
    const replicas = db.topology().replicas.map((r) => r.name)
    expect(replicas).toContain(old)
    for (const r of replicas) {
      await lab.pauseReplay(r)
      paused.push(r)
    }
    const checkedBeforePause = checked
    await sleep(3_000)
    stop = true
    await Promise.all(clients)

    for (const r of paused) expect(await lab.sql('SELECT pg_is_wal_replay_paused()', r)).toEqual([['t']])
    // Control: an ordinary read of a fresh write on a replica does miss it (the check can fail).
    const w = await db.write<{ id: number }>(
      "INSERT INTO ryw_failover (label) VALUES ('control') RETURNING id",
    )
    let controlMissed = false
    for (let i = 0; i < 6 && !controlMissed; i++) {
      const r = await db.read('SELECT label FROM ryw_failover WHERE id = $1', [w.rows[0]!.id])
      controlMissed = r.rows.length === 0
    }
    expect(controlMissed).toBe(true)

    await lab.resumeReplay()
    paused = []

    console.log(
      `ryw-failover: ${checked} read-after-write checks (${checked - checkedBeforePause} with replay paused), ${failed} failed calls, timelines ${[...timelines].join(',')}`,
    )
    expect(violations).toEqual([])
    expect(checked - checkedBeforePause).toBeGreaterThan(20)
    expect(checked).toBeGreaterThan(100)
    // tokens carried the new timeline after the failover
    const after = db.topology().primary?.timeline ?? null
    expect(after).not.toBeNull()
    if (before !== null) expect(after!).toBeGreaterThan(before)
    expect(timelines.has(after)).toBe(true)
    // (null shows up when a write succeeded but reading its position failed, as when the
    // connection died right after it: that session then reads from the primary)
  }, 240_000)
})
