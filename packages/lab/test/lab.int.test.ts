import { existsSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { inspect } from 'node:util'
import { isProcessAlive, type Lab, redisCommand, startLab } from '@resilient/lab'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

/** Sends a raw inline PING and resolves with whatever arrives within `ms` ('' when nothing). */
function rawPing(port: number, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let got = ''
    const socket = connect({ host: '127.0.0.1', port })
    const done = () => {
      socket.destroy()
      resolve(got)
    }
    const timer = setTimeout(done, ms)
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (d) => {
      got += d.toString()
      if (got.includes('\r\n')) {
        clearTimeout(timer)
        done()
      }
    })
    socket.on('error', (err) => {
      clearTimeout(timer)
      got = `error: ${err.message}`
      done()
    })
  })
}

describe('a 3-member Patroni lab with Redis', () => {
  let lab: Lab
  let bootMs = 0
  const lines: string[] = []

  beforeAll(async () => {
    const t0 = performance.now()
    lab = await startLab({ nodes: 3, log: (l) => lines.push(l) })
    bootMs = performance.now() - t0
    console.log(`3-member lab ready in ${(bootMs / 1000).toFixed(1)} s`)
  })

  afterAll(async () => {
    await lab?.down()
  })

  it('boots one leader and two streaming replicas within 45 s', async () => {
    expect(bootMs).toBeLessThan(45_000)
    expect(lab.bootSeconds).toBeLessThan(45)
    const cluster = await lab.cluster()
    expect(cluster.members).toHaveLength(3)
    const leaders = cluster.members.filter((m) => m.role === 'leader')
    expect(leaders).toHaveLength(1)
    expect(leaders[0]!.state).toBe('running')
    const replicas = cluster.members.filter((m) => m.role === 'replica')
    expect(replicas).toHaveLength(2)
    for (const r of replicas) {
      expect(['running', 'streaming']).toContain(r.state)
      expect(typeof r.lag).toBe('number')
    }
    // Streaming for real: the leader's pg_stat_replication lists both replicas.
    const rows = await lab.sql('select application_name, state from pg_stat_replication order by 1')
    expect(rows).toEqual(replicas.map((r) => [r.name, 'streaming']).sort())
    expect(lab.patroni.endpoints).toHaveLength(3)
    expect(lab.members.map((m) => m.name)).toEqual(['pg0', 'pg1', 'pg2'])
    const primary = await lab.primary()
    expect(primary?.name).toBe(leaders[0]!.name)
    expect(lab.connectionString()).toBe(lab.connectionString(primary!.name))
    expect(lab.connectionString()).toMatch(/^postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/postgres$/)
  })

  it('runs SQL on the leader and the replicas see it', async () => {
    await lab.sql('create table lab_probe (id int primary key, note text)')
    await lab.sql("insert into lab_probe values (1, 'one'), (2, null)")
    expect(await lab.sql('select id, note from lab_probe order by id')).toEqual([
      ['1', 'one'],
      ['2', ''],
    ])
    const [replica] = await lab.replicas()
    const deadline = Date.now() + 10_000
    let seen: string[][] = []
    while (Date.now() < deadline) {
      seen = await lab.sql('select count(*) from lab_probe', replica!.name).catch(() => [])
      if (seen[0]?.[0] === '2') break
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(seen).toEqual([['2']])
    expect(await lab.sql('select pg_is_in_recovery()', replica!.name)).toEqual([['t']])
    await expect(lab.sql('select * from no_such_table')).rejects.toThrow(/no_such_table/)
    // psql echoes a bad value in its error: a password there is redacted.
    const err = await lab.sql(`select '${lab.postgres.password}'::int`).catch((e: Error) => e)
    expect(String(err)).toContain('[redacted]')
    expect(inspect(err, { depth: 10 })).not.toContain(lab.postgres.password)
  })

  it('the application role (app): logs in over TCP with scram, its password rotates', async () => {
    const app = lab.postgresApp!
    expect(app).toEqual({ user: 'app', password: expect.any(String), database: 'postgres' })
    const port = (await lab.primary())!.port
    const before = new pg.Client({ host: '127.0.0.1', port, ...app })
    await before.connect()
    try {
      expect((await before.query('select current_user as u')).rows[0].u).toBe('app')
      // pg_monitor: the replication view shows the replicas to the application.
      expect(
        (
          await before.query(
            'select count(*)::int as n from pg_stat_replication where client_addr is not null',
          )
        ).rows[0].n,
      ).toBe(2)
      await lab.rotatePostgresPassword('plain-Rotated-1')
      expect((await before.query('select 1 as one')).rows[0].one).toBe(1)
    } finally {
      await before.end()
    }
    const stale = new pg.Client({ host: '127.0.0.1', port, ...app })
    await expect(stale.connect()).rejects.toMatchObject({ code: '28P01' })
    const fresh = new pg.Client({ host: '127.0.0.1', port, ...lab.postgresApp! })
    await fresh.connect()
    await fresh.end()
  })

  it('killPrimary: a different leader takes over; the old one rejoins as a replica', async () => {
    const before = await lab.primary()
    const t0 = performance.now()
    const killed = await lab.killPrimary()
    expect(killed).toBe(before!.name)
    const next = await lab.waitForPrimary({ not: killed, timeoutMs: 60_000 })
    console.log(`new leader ${next.name} after ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    expect(next.name).not.toBe(killed)
    const cluster = await lab.cluster()
    expect(cluster.members.find((m) => m.role === 'leader')?.name).toBe(next.name)
    expect(await lab.sql('select pg_is_in_recovery()')).toEqual([['f']])
    await lab.sql("insert into lab_probe values (3, 'after failover')")

    await lab.startMember(killed)
    const replicas = await lab.waitForReplicas(2, { timeoutMs: 60_000 })
    expect(replicas.map((r) => r.name)).toContain(killed)
    expect((await lab.primary())?.name).toBe(next.name)
  })

  it('switchover: the candidate becomes the leader', async () => {
    const before = await lab.primary()
    const candidate = lab.members.find((m) => m.name !== before!.name)!.name
    const next = await lab.switchover({ candidate })
    expect(next.name).toBe(candidate)
    expect((await lab.primary())?.name).toBe(candidate)
    expect(await lab.sql('select pg_is_in_recovery()', candidate)).toEqual([['f']])
    const replicas = await lab.waitForReplicas(2, { timeoutMs: 60_000 })
    expect(replicas.map((r) => r.name).sort()).toEqual(
      lab.members.map((m) => m.name).filter((n) => n !== candidate),
    )
  })

  it('stopMember / startMember of a replica', async () => {
    const leader = await lab.primary()
    const replica = (await lab.replicas())[0]!
    await lab.stopMember(replica.name)
    const replicaPid = lab.state.members.find((m) => m.name === replica.name)?.pid
    expect(replicaPid).toBeUndefined()
    // The leader stays; pg_stat_replication drops the stopped replica.
    const deadline = Date.now() + 15_000
    let names: string[] = []
    while (Date.now() < deadline) {
      names = (await lab.sql('select application_name from pg_stat_replication')).map((r) => r[0]!)
      if (!names.includes(replica.name)) break
      await new Promise((r) => setTimeout(r, 200))
    }
    expect(names).not.toContain(replica.name)
    await lab.startMember(replica.name)
    await lab.waitForReplicas(2, { timeoutMs: 60_000 })
    expect((await lab.primary())?.name).toBe(leader!.name)
    expect(await lab.sql('select count(*) from lab_probe', replica.name)).toEqual([['3']])
  })

  it('pauseRedis: no answer within 300 ms; resumeRedis: answers again', async () => {
    const { port } = lab.redis
    expect(await rawPing(port, 1000)).toBe('+PONG\r\n')
    await lab.pauseRedis()
    try {
      expect(await rawPing(port, 300)).toBe('')
    } finally {
      await lab.resumeRedis()
    }
    expect(await rawPing(port, 1000)).toBe('+PONG\r\n')
  })

  it('killRedis / restartRedis: the same port answers again', async () => {
    const { port } = lab.redis
    const oldPid = lab.redisNodes[0]!.pid!
    await lab.killRedis()
    expect(isProcessAlive(oldPid)).toBe(false)
    expect(await rawPing(port, 300)).toMatch(/^error: .*ECONNREFUSED/)
    await lab.restartRedis()
    expect(lab.redis.port).toBe(port)
    expect(await redisCommand(port, ['PING'])).toBe('PONG')
  })

  it('down() ends every process it started and removes the folder', async () => {
    const pids = lab.pids()
    const postmasters = lab.postmasterPids()
    expect(postmasters).toHaveLength(3)
    expect(pids.length).toBeGreaterThanOrEqual(6)
    // PostgreSQL's SysV segments (line 7 of postmaster.pid: key, id) must not outlive the lab.
    const segments = lab.state.members.map((m) => {
      const [key, id] = readFileSync(`${m.dataDir}/postmaster.pid`, 'utf8')
        .split('\n')[6]!
        .trim()
        .split(/\s+/)
      return `${key} ${id}`
    })
    await lab.down()
    const table = readFileSync('/proc/sysvipc/shm', 'utf8')
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/).slice(0, 2).join(' '))
    for (const seg of segments) expect(table).not.toContain(seg)
    for (const pid of pids) expect(() => process.kill(pid, 0), `pid ${pid}`).toThrow()
    for (const pid of postmasters) expect(isProcessAlive(pid), `postmaster ${pid}`).toBe(false)
    expect(existsSync(lab.baseDir)).toBe(false)
    await lab.down() // idempotent
  })
})
