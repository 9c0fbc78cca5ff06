import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

describe('synchronousMode: true', () => {
  let lab: Lab

  beforeAll(async () => {
    lab = await startLab({ nodes: 3, synchronousMode: true })
  })

  afterAll(async () => {
    await lab?.down()
  })

  it('one leader, one sync_standby, one replica; all streaming', async () => {
    const replicas = await lab.waitForReplicas(2, { timeoutMs: 30_000 })
    expect(replicas).toHaveLength(2)
    // Patroni names its synchronous standby only after a loop or two.
    const deadline = Date.now() + 15_000
    let roles: string[] = []
    while (Date.now() < deadline) {
      roles = (await lab.cluster()).members.map((m) => m.role).sort()
      if (roles.includes('sync_standby')) break
      await new Promise((r) => setTimeout(r, 200))
    }
    expect(roles).toEqual(['leader', 'replica', 'sync_standby'])
    const rows = await lab.sql('select sync_state from pg_stat_replication order by 1')
    expect(rows).toEqual([['async'], ['sync']])
    expect(await lab.sql('show synchronous_commit')).toEqual([['on']])
  })

  it('graceful stop of the leader: Patroni hands over at once; the sync standby becomes leader', async () => {
    const cluster = await lab.cluster()
    const leader = cluster.members.find((m) => m.role === 'leader')!.name
    const sync = cluster.members.find((m) => m.role === 'sync_standby')!.name
    const t0 = performance.now()
    await lab.stopMember(leader, { graceful: true })
    const next = await lab.waitForPrimary({ not: leader, timeoutMs: 30_000 })
    const seconds = (performance.now() - t0) / 1000
    console.log(`graceful stop of the leader: new leader ${next.name} after ${seconds.toFixed(1)} s`)
    expect(next.name).toBe(sync)
    // No TTL wait: well under ttl (10 s).
    expect(seconds).toBeLessThan(9)
    await lab.startMember(leader)
    await lab.waitForReplicas(2, { timeoutMs: 60_000 })
  })
})
