import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { isProcessAlive, type Lab, startLab } from '@resilient/lab'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

/** The state letter of /proc/<pid>/stat ('T' = stopped), or 'gone'. */
function procState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  } catch {
    return 'gone'
  }
}

const seconds = (t0: number) => ((performance.now() - t0) / 1000).toFixed(1)

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe().catch(() => undefined)
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function patroniStatus(apiUrl: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${apiUrl}/patroni`, { signal: AbortSignal.timeout(2000) })
  return (await res.json()) as Record<string, unknown>
}

/** Resolves true when a TCP handshake with the port completes (the kernel answers even for a stopped server). */
function handshake(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(2000, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

describe('gray failures: freezeMember, freezeDcs (with and without failsafe_mode), setReadOnly', () => {
  let lab: Lab
  let failsafe: Lab
  const clients: pg.Client[] = []

  beforeAll(async () => {
    const t0 = performance.now()
    ;[lab, failsafe] = await Promise.all([
      startLab({ nodes: 3, redis: false }),
      startLab({ nodes: 2, redis: false, failsafeMode: true }),
    ])
    console.log(`3-member lab and 2-member failsafe lab ready in ${seconds(t0)} s`)
  })

  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {})
    await Promise.all([lab?.down(), failsafe?.down()])
  })

  async function client(l: Lab, member: string): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: l.connectionString(member) })
    c.on('error', () => {}) // asserted through the events below
    clients.push(c)
    await c.connect()
    return c
  }

  it('freezeMember: the primary hangs without a reset, a replica takes over after the TTL, the thawed node answers', async () => {
    const leader = (await lab.primary())!
    const c = await client(lab, leader.name)
    const backend = (await c.query('select pg_backend_pid() as pid')).rows[0].pid as number
    const events: string[] = []
    c.on('error', (err) => events.push(`error: ${err.message}`))
    c.on('end', () => events.push('end'))

    const t0 = performance.now()
    const frozen = await lab.freezeMember(leader.name)
    expect(frozen.name).toBe(leader.name)
    expect(frozen.postmaster).toBe(lab.postmasterPids().find((p) => frozen.pids.includes(p)))
    // Patroni, the postmaster and every child, our backend and the two walsenders among them.
    expect(frozen.children).toContain(backend)
    expect(frozen.children.length).toBeGreaterThanOrEqual(5)
    for (const pid of frozen.pids) expect(procState(pid), `pid ${pid}`).toBe('T')
    expect(lab.frozenMembers()).toEqual([leader.name])

    let answered = false
    const pending = c.query('select 1 as one').then((r) => {
      answered = true
      return r.rows
    })
    // New TCP connections still complete: the kernel answers the handshake of a stopped server.
    expect(await handshake(leader.port)).toBe(true)

    const next = await lab.waitForPrimary({ not: leader.name, timeoutMs: 60_000 })
    const failoverSeconds = (performance.now() - t0) / 1000
    console.log(
      `frozen primary ${leader.name}: new leader ${next.name} after ${failoverSeconds.toFixed(1)} s`,
    )
    // The leader key expired (ttl 10 s, last renewed at most one 2 s loop before the freeze):
    // nothing reset, so nothing faster could have told the replicas.
    expect(failoverSeconds).toBeGreaterThan(6)
    expect(answered).toBe(false)
    expect(events).toEqual([])
    for (const pid of frozen.pids) expect(procState(pid), `pid ${pid}`).toBe('T')

    await lab.thawMember(leader.name)
    expect(lab.frozenMembers()).toEqual([])
    // The statement sent to the frozen node is answered once it runs again.
    expect(await pending).toEqual([{ one: 1 }])
    console.log(`thawed ${leader.name}: the pending SELECT 1 answered ${seconds(t0)} s after the freeze`)

    // Patroni 3.0.2 may hand leadership back to the thawed node (FACTS.md); either way the
    // cluster settles with one leader and two streaming replicas.
    const t1 = performance.now()
    await lab.waitForPrimary({ timeoutMs: 60_000 })
    await lab.rejoinReplicas({ timeoutMs: 90_000 })
    await lab.waitForReplicas(2, { timeoutMs: 60_000 })
    console.log(`cluster settled ${seconds(t1)} s after the thaw; leader ${(await lab.primary())?.name}`)
  })

  it('freezeDcs: the leader demotes itself, unless failsafe_mode is on; both recover after thawDcs', async () => {
    const plainLeader = (await lab.primary())!
    const safeLeader = (await failsafe.primary())!
    const t0 = performance.now()
    await Promise.all([lab.freezeDcs(), failsafe.freezeDcs()])
    // Patroni's dcs_last_seen (epoch seconds) stops moving: a reply already on its way when etcd
    // stopped can still be read a little later on a loaded machine, so the test asserts its age.
    const age = async (apiUrl: string) =>
      Date.now() / 1000 - Number((await patroniStatus(apiUrl)).dcs_last_seen)
    expect(lab.state.frozen?.dcs).toBe(true)
    try {
      // Without failsafe mode, Patroni 3.0.2 restarts the leader's PostgreSQL read-only.
      await until(
        `${plainLeader.name} to be demoted`,
        async () => {
          const rows = await lab.sql('select pg_is_in_recovery()', plainLeader.name)
          return rows[0]?.[0] === 't' ? true : undefined
        },
        60_000,
      )
      const demotedAfter = (performance.now() - t0) / 1000
      console.log(`etcd frozen: ${plainLeader.name} demoted after ${demotedAfter.toFixed(1)} s`)
      expect((await patroniStatus(plainLeader.apiUrl)).role).not.toBe('master')
      // Demotion comes only after Patroni's DCS calls failed for retry_timeout (5 s).
      expect(await age(plainLeader.apiUrl)).toBeGreaterThan(3)

      // With failsafe mode, the leader asks every member (POST /failsafe) and stays primary.
      await until(
        `failsafe mode to be active on ${safeLeader.name}`,
        async () =>
          (await patroniStatus(safeLeader.apiUrl)).failsafe_mode_is_active === true ? true : undefined,
        30_000,
      )
      // Past the TTL (10 s) and the plain leader's demotion, it still takes writes.
      while (performance.now() - t0 < 12_000) await new Promise((r) => setTimeout(r, 200))
      expect(await failsafe.sql('select pg_is_in_recovery()', safeLeader.name)).toEqual([['f']])
      await failsafe.sql('create table failsafe_probe (id int)', safeLeader.name)
      const safeStatus = await patroniStatus(safeLeader.apiUrl)
      expect(safeStatus.role).toBe('master')
      expect(await age(safeLeader.apiUrl)).toBeGreaterThan(6)
    } finally {
      await Promise.all([lab.thawDcs(), failsafe.thawDcs()])
    }
    expect(lab.state.frozen?.dcs).toBe(false)
    const t1 = performance.now()
    const back = await lab.waitForPrimary({ timeoutMs: 60_000 })
    console.log(`etcd thawed: leader ${back.name} writable again after ${seconds(t1)} s`)
    await lab.waitForReplicas(2, { timeoutMs: 60_000 })
    const safeNow = await failsafe.waitForPrimary({ timeoutMs: 60_000 })
    expect(safeNow.name).toBe(safeLeader.name)
    expect(await failsafe.sql('select count(*) from failsafe_probe', safeLeader.name)).toEqual([['0']])
  })

  it('setReadOnly: existing sessions get 25006 on writes while still primary; off undoes it on them too', async () => {
    const leader = await lab.waitForPrimary({ timeoutMs: 60_000 })
    await lab.sql('create table ro_probe (id int)', leader.name)
    const c = await client(lab, leader.name)
    await c.query('insert into ro_probe values (1)')

    const t0 = performance.now()
    await lab.setReadOnly(true)
    console.log(`setReadOnly(true) in effect after ${seconds(t0)} s`)
    await expect(c.query('insert into ro_probe values (2)')).rejects.toMatchObject({ code: '25006' })
    expect((await c.query('select pg_is_in_recovery() as r')).rows).toEqual([{ r: false }])
    expect((await c.query('show default_transaction_read_only')).rows).toEqual([
      { default_transaction_read_only: 'on' },
    ])
    expect((await lab.primary())?.name).toBe(leader.name)

    const t1 = performance.now()
    await lab.setReadOnly(false)
    console.log(`setReadOnly(false) in effect after ${seconds(t1)} s`)
    await c.query('insert into ro_probe values (3)')
    expect((await c.query('select array_agg(id order by id) as ids from ro_probe')).rows).toEqual([
      { ids: [1, 3] },
    ])
  })

  it('down() with a frozen primary and a frozen etcd leaves nothing running', async () => {
    const name = await failsafe.freezePrimary()
    const frozen = failsafe.frozenMembers()
    expect(frozen).toEqual([name])
    await failsafe.freezeDcs()
    const postmasters = failsafe.postmasterPids()
    const children = postmasters.flatMap(childrenOf)
    const pids = [...failsafe.pids(), ...postmasters, ...children]
    expect(children.filter((pid) => procState(pid) === 'T').length).toBeGreaterThanOrEqual(3)
    const t0 = performance.now()
    await failsafe.down()
    console.log(`down() of a frozen lab took ${seconds(t0)} s`)
    expect(pids.filter(isProcessAlive)).toEqual([])
    expect(existsSync(failsafe.baseDir)).toBe(false)
  })
})

/** PIDs of the live processes whose parent is `parent`. */
function childrenOf(parent: number): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent) out.push(Number(entry))
    } catch {
      // exited meanwhile
    }
  }
  return out
}
