import { inspect } from 'node:util'
import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPatroniDiscovery, mapPatroniRole } from '../src/discovery/patroni.js'
import { createStaticDiscovery } from '../src/discovery/static.js'
import type { Discovery, DiscoveryErrorEvent, DiscoveryResult } from '../src/discovery/types.js'

// One 3-node lab for the file (about 20 s to boot); one switchover (a few s).
let lab: Lab
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)
const open: Discovery[] = []

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled)
  lab = await startLab({ nodes: 3, redis: false })
  await lab.waitForReplicas(2)
})

afterAll(async () => {
  await Promise.all(open.map((d) => d.close()))
  await lab?.down()
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

function staticOver(extra: { host: string; port: number }[] = []) {
  const { user, password, database } = lab.postgres
  const d = createStaticDiscovery({
    hosts: [...lab.members.map((m) => ({ host: m.host, port: m.port })), ...extra],
    connection: { user, password, database },
    timeoutMs: 1_000,
  })
  open.push(d)
  const events: DiscoveryErrorEvent[] = []
  d.onError((e) => events.push(e))
  return { d, events }
}

/** port -> role, as Patroni's own /cluster says (fetched by the lab, not by our code). */
async function patroniRoles(): Promise<Map<number, string>> {
  const c = await lab.cluster()
  return new Map(c.members.map((m) => [m.port!, mapPatroniRole(m.role)]))
}

const rolesByPort = (r: DiscoveryResult) => new Map(r.members.map((m) => [m.port, m.role as string]))

describe('static discovery against a real Patroni cluster', () => {
  it('finds the same roles as Patroni /cluster, one primary, replica lag in bytes', async () => {
    const { d, events } = staticOver()
    const r = await d.discover()
    expect(r.source).toBe('static')
    expect(r.conflict).toBeUndefined()
    expect(rolesByPort(r)).toEqual(await patroniRoles())
    expect(r.members.filter((m) => m.role === 'primary')).toHaveLength(1)
    for (const m of r.members) {
      expect(m.name).toBe(`${m.host}:${m.port}`)
      expect(m.state).toBe('running')
      if (m.role === 'replica') expect(typeof m.lagBytes).toBe('number')
      else expect(m.lagBytes).toBeNull()
    }
    expect(events).toEqual([])
    expect(inspect(d, { showHidden: true, depth: 10 })).not.toContain(lab.postgres.password)
  })

  it('agrees with Patroni discovery on every member', async () => {
    const p = createPatroniDiscovery({ endpoints: lab.patroni.endpoints })
    open.push(p)
    const { d } = staticOver()
    const [fromPatroni, fromSql] = await Promise.all([p.discover(), d.discover()])
    expect(fromPatroni.source).toBe(`${lab.patroni.endpoints[0]}/cluster`)
    expect(rolesByPort(fromPatroni)).toEqual(rolesByPort(fromSql))
    expect(fromPatroni.members.map((m) => m.name).sort()).toEqual(lab.members.map((m) => m.name).sort())
  })

  it('a dead host is unknown/unreachable with an event; the others still answer', async () => {
    const { d, events } = staticOver([{ host: '127.0.0.1', port: 1 }])
    const r = await d.discover()
    expect(r.members.at(-1)).toMatchObject({ name: '127.0.0.1:1', role: 'unknown', state: 'unreachable' })
    expect(r.members.filter((m) => m.role === 'primary')).toHaveLength(1)
    expect(events.map((e) => e.source)).toEqual(['127.0.0.1:1'])
  })

  it('survives its probe connections being terminated, reconnecting on the next poll', async () => {
    const { d, events } = staticOver()
    await d.discover()
    for (const m of lab.members) {
      await lab.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'resilient-pg-router-discovery'",
        m.name,
      )
    }
    await new Promise((r) => setTimeout(r, 100))
    // At most one poll may see a dying connection; the next one reconnects everywhere.
    await d.discover().catch(() => {})
    const r = await d.discover()
    expect(r.members.every((m) => m.role !== 'unknown')).toBe(true)
    expect(rolesByPort(r)).toEqual(await patroniRoles())
    for (const e of events) expect(e.error.message).not.toContain(lab.postgres.password)
  })

  it('two hosts that both answer pg_is_in_recovery() = false are a conflict', async () => {
    const primary = (await lab.primary())!
    const { d } = staticOver([{ host: 'localhost', port: primary.port }])
    const r = await d.discover()
    expect(r.conflict?.sort()).toEqual([`127.0.0.1:${primary.port}`, `localhost:${primary.port}`].sort())
  })

  it('measures a replica that stopped replaying as lagging, in bytes', async () => {
    const replica = (await lab.replicas())[0]!
    const { d } = staticOver()
    // Patroni 3 resumes paused replay (PG 14+) in its HA loop unless in maintenance mode:
    // the lab's pauseReplay turns maintenance mode on first.
    await lab.pauseReplay(replica.name)
    try {
      await lab.sql('CREATE TABLE lag_t AS SELECT g FROM generate_series(1, 20000) g')
      const r = await d.discover()
      const lagging = r.members.find((m) => m.port === replica.port)!
      expect(lagging.role).toBe('replica')
      expect(lagging.lagBytes).toBeGreaterThan(100_000)
    } finally {
      await lab.resumeReplay(replica.name)
    }
  })

  it('follows a switchover', async () => {
    const { d } = staticOver()
    const p = createPatroniDiscovery({ endpoints: lab.patroni.endpoints })
    open.push(p)
    const before = (await lab.primary())!
    const next = await lab.switchover()
    expect(next.name).not.toBe(before.name)
    const r = await d.discover()
    expect(r.members.find((m) => m.port === next.port)?.role).toBe('primary')
    expect(r.members.filter((m) => m.role === 'primary')).toHaveLength(1)
    const fromPatroni = await p.discover()
    expect(fromPatroni.members.find((m) => m.role === 'primary')?.name).toBe(next.name)
  })
})
