import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

describe('synchronousMode: true', () => {
  let lab: Lab
  const lines: string[] = []

  beforeAll(async () => {
    lab = await startLab({ nodes: 3, synchronousMode: true, redis: false, log: (l) => lines.push(l) })
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
    const back = await lab.startMember(leader)
    expect(back.role).toBe('replica')
    await lab.waitForReplicas(2, { timeoutMs: 60_000 })
  })

  it('waitForSyncStandby(): the sync_standby, streaming with sync_state sync and lag 0', async () => {
    const sync = await lab.waitForSyncStandby({ timeoutMs: 30_000 })
    const cluster = await lab.cluster()
    const m = cluster.members.find((x) => x.name === sync.name)!
    expect(m.role).toBe('sync_standby')
    expect(sync.lag).toBe(0)
    const rows = await lab.sql(
      `select state, sync_state from pg_stat_replication where application_name = '${sync.name}'`,
    )
    expect(rows).toEqual([['streaming', 'sync']])
  })

  it('killPrimary() right after a rejoin waits for a settled sync standby; a new leader follows', async () => {
    // The old leader rejoined in the previous test, so the sync role may be moving to it now:
    // the case in which Patroni 3.0.2 can stall with no leader if the leader dies.
    const killed = await lab.killPrimary({ timeoutMs: 30_000 })
    expect(lines.some((l) => /^sync standby pg\d settled: killing the leader$/.test(l))).toBe(true)
    const next = await lab.waitForPrimary({ not: killed, timeoutMs: 40_000 })
    expect(next.name).not.toBe(killed)
    const back = await lab.startMember(killed, { timeoutMs: 60_000 })
    expect(back.role).toBe('replica')
    await lab.waitForReplicas(2, { timeoutMs: 30_000 })
  })

  it('pauseReplay() holds replay across Patroni loops (maintenance mode); resumeReplay() undoes both', async () => {
    await lab.sql('create table if not exists replay_probe (v text)')
    const paused = await lab.pauseReplay(undefined, { timeoutMs: 20_000 })
    try {
      expect(paused).toHaveLength(2)
      for (const m of lab.members) {
        const st = (await (await fetch(`${m.apiUrl}/patroni`)).json()) as { pause?: boolean }
        expect(st.pause).toBe(true)
      }
      await lab.sql("insert into replay_probe values ('while-paused')")
      // Longer than one Patroni loop (loop_wait 2 s, plus the HA cycle itself), which outside maintenance mode resumes replay.
      await new Promise((r) => setTimeout(r, 3000))
      for (const r of paused) {
        expect(await lab.sql('select pg_get_wal_replay_pause_state()', r)).toEqual([['paused']])
        expect(await lab.sql("select count(*) from replay_probe where v = 'while-paused'", r)).toEqual([
          ['0'],
        ])
      }
    } finally {
      const resumed = await lab.resumeReplay(undefined, { timeoutMs: 20_000 })
      expect(resumed.sort()).toEqual([...paused].sort())
    }
    for (const m of lab.members) {
      const st = (await (await fetch(`${m.apiUrl}/patroni`)).json()) as { pause?: boolean }
      expect(st.pause ?? false).toBe(false)
    }
    for (const r of paused) {
      const deadline = Date.now() + 10_000
      let rows: string[][] = []
      while (Date.now() < deadline) {
        rows = await lab.sql("select count(*) from replay_probe where v = 'while-paused'", r)
        if (rows[0]?.[0] === '1') break
        await new Promise((res) => setTimeout(res, 100))
      }
      expect(rows).toEqual([['1']])
      expect(await lab.sql('select pg_get_wal_replay_pause_state()', r)).toEqual([['not paused']])
    }
    // One replica only: the other keeps replaying.
    const [one, other] = paused as [string, string]
    expect(await lab.pauseReplay(one, { timeoutMs: 20_000 })).toEqual([one])
    await lab.sql("insert into replay_probe values ('one-paused')")
    const deadline = Date.now() + 10_000
    let rows: string[][] = []
    while (Date.now() < deadline) {
      rows = await lab.sql("select count(*) from replay_probe where v = 'one-paused'", other)
      if (rows[0]?.[0] === '1') break
      await new Promise((res) => setTimeout(res, 100))
    }
    expect(rows).toEqual([['1']])
    expect(await lab.sql("select count(*) from replay_probe where v = 'one-paused'", one)).toEqual([['0']])
    expect(await lab.resumeReplay(one, { timeoutMs: 20_000 })).toEqual([one])
  })
})
