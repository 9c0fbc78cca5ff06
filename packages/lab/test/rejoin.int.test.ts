import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// The case that used to leave a killed primary broken: kill -9 while writes are in flight
// (asynchronous replication), so the old primary holds WAL its successor never received.
// startMember() must bring it back streaming every time (pg_rewind, or a re-clone).
const KILLS = 3

describe('kill -9 of the primary under write load, then startMember() of the old primary', () => {
  let lab: Lab
  const lines: string[] = []

  beforeAll(async () => {
    lab = await startLab({ nodes: 3, redis: false, log: (l) => lines.push(l) })
    await lab.sql('create table chaos (id bigserial primary key, v text)')
  })

  afterAll(async () => {
    await lab?.down()
  })

  /** Two psql loops writing about 2 MB of WAL per statement on `member` until it fails. */
  function writeLoad(member: string): { stop: () => Promise<number> } {
    let running = true
    let statements = 0
    const loop = async () => {
      while (running) {
        try {
          await lab.sql("insert into chaos (v) select repeat('x', 400) from generate_series(1, 4000)", member)
          statements++
        } catch {
          return // the member died
        }
      }
    }
    const loops = [loop(), loop()]
    return {
      stop: async () => {
        running = false
        await Promise.all(loops)
        return statements
      },
    }
  }

  it(`${KILLS} times: the old primary streams again after startMember()`, async () => {
    const results = []
    const bystanders: string[] = []
    for (let i = 0; i < KILLS; i++) {
      const leader = (await lab.waitForPrimary({ timeoutMs: 30_000 })).name
      const load = writeLoad(leader)
      // Let WAL pile up in flight before the kill.
      await new Promise((r) => setTimeout(r, 1000))
      const killed = await lab.killPrimary()
      expect(killed).toBe(leader)
      const statements = await load.stop()
      expect(statements).toBeGreaterThan(0)
      const next = await lab.waitForPrimary({ not: killed, timeoutMs: 40_000 })
      const back = await lab.startMember(killed, { timeoutMs: 60_000 })
      results.push({ killed, next: next.name, ...back })
      expect(back.role).toBe('replica')
      // The bystander replica may have received WAL the new leader never got: it diverged too.
      const others = await lab.rejoinReplicas({ timeoutMs: 60_000 })
      expect(others.map((o) => o.name).sort()).toEqual(
        lab.members
          .map((m) => m.name)
          .filter((n) => n !== next.name)
          .sort(),
      )
      for (const o of others) {
        expect(o.role).toBe('replica')
        if (o.reinitialized) bystanders.push(`${o.name} (${o.reason})`)
      }
      await lab.waitForReplicas(2, { timeoutMs: 30_000 })
      // Independent check: the leader lists it streaming, and it replays what the leader writes.
      const leaderNow = (await lab.waitForPrimary({ timeoutMs: 10_000 })).name
      const streaming = await lab.sql(
        "select application_name from pg_stat_replication where state = 'streaming' order by 1",
        leaderNow,
      )
      expect(streaming.map((r) => r[0])).toContain(killed)
      const marker = `round-${i}`
      await lab.sql(`insert into chaos (v) values ('${marker}')`, leaderNow)
      const deadline = Date.now() + 15_000
      let seen: string[][] = []
      while (Date.now() < deadline) {
        seen = await lab.sql(`select count(*) from chaos where v = '${marker}'`, killed)
        if (seen[0]?.[0] === '1') break
        await new Promise((r) => setTimeout(r, 100))
      }
      expect(seen).toEqual([['1']])
      expect(await lab.sql('select pg_is_in_recovery()', killed)).toEqual([['t']])
    }
    console.log(
      `rejoins: ${results
        .map(
          (r) =>
            `${r.killed}->${r.next}: back in ${r.seconds} s${r.reinitialized ? ` (reinitialized: ${r.reason})` : ''}`,
        )
        .join('; ')}`,
    )
    console.log(`bystander replicas re-cloned: ${bystanders.join('; ') || 'none'}`)
    const rewinds = lines.filter((l) => l.includes('reinitialize'))
    if (rewinds.length > 0) console.log(rewinds.join('\n'))
    // What Patroni itself did (for the report): pg_rewind runs and its own re-clones.
    const logs = lab.members
      .map((m) => readFileSync(join(lab.baseDir, m.name, 'patroni.log'), 'utf8'))
      .join('\n')
    const count = (s: string) => logs.split(s).length - 1
    console.log(
      `patroni logs: ${count('running pg_rewind from')} pg_rewind run(s), ${count('reinitializing due to diverged timelines')} diverged-timeline re-clone(s), ${count("is not in this server's history")} "not in this server's history" line(s)`,
    )
    await lab.waitForReplicas(2, { timeoutMs: 30_000 })
  })

  it('the fallback: a member not streaming after reinitializeAfterMs is re-cloned and streams', async () => {
    const replica = (await lab.replicas())[0]!.name
    await lab.stopMember(replica)
    // reinitializeAfterMs 0: the first poll that does not see it streaming re-clones it.
    const back = await lab.startMember(replica, { reinitializeAfterMs: 0, timeoutMs: 60_000 })
    expect(back).toMatchObject({ name: replica, role: 'replica', reinitialized: true })
    expect(back.reason).toMatch(/not streaming after/)
    expect(lines.some((l) => l.startsWith(`${replica} stuck (not streaming after`))).toBe(true)
    const leader = (await lab.waitForPrimary({ timeoutMs: 10_000 })).name
    const streaming = await lab.sql(
      "select application_name from pg_stat_replication where state = 'streaming'",
      leader,
    )
    expect(streaming.map((r) => r[0])).toContain(replica)
    // The re-clone holds the leader's data.
    const want = await lab.sql('select count(*) from chaos', leader)
    const deadline = Date.now() + 15_000
    let got: string[][] = []
    while (Date.now() < deadline) {
      got = await lab.sql('select count(*) from chaos', replica)
      if (got[0]?.[0] === want[0]?.[0]) break
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(got).toEqual(want)
  })
})
