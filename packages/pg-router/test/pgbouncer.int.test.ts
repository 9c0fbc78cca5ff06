import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ensurePackages, type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createStaticDiscovery } from '../src/discovery/static.js'

// PgBouncer 1.18 (Debian's /usr/sbin/pgbouncer) in transaction pool mode in front of a
// 1-node lab; the router finds it through static `hosts` discovery. Transaction pooling
// means: no session state may be assumed between statements (no named prepared
// statements, no SET outside a transaction). Only 2 server connections back 8 clients.
const PGBOUNCER = '/usr/sbin/pgbouncer'

let lab: Lab
let db: PgRouter
let dir: string
let bouncer: ChildProcess | undefined
let port: number

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const p = (s.address() as net.AddressInfo).port
  await new Promise<void>((r) => s.close(() => r()))
  return p
}

async function waitForPort(p: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(p, '127.0.0.1')
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > until) throw new Error(`pgbouncer did not listen on ${p}: ${readLog()}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const readLog = () => {
  try {
    return readFileSync(join(dir, 'pgbouncer.log'), 'utf8').slice(-2000)
  } catch {
    return '(no log)'
  }
}

async function startPgBouncer(serverPort: number): Promise<void> {
  const { user, password, database } = lab.postgres
  dir = mkdtempSync(join(tmpdir(), 'pgbouncer-'))
  port = await freePort()
  const q = (s: string) => `"${s.replace(/"/g, '""')}"`
  writeFileSync(join(dir, 'userlist.txt'), `${q(user)} ${q(password)}\n`, { mode: 0o600 })
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `${database} = host=127.0.0.1 port=${serverPort} dbname=${database}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = scram-sha-256',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      `stats_users = ${user}`,
      'default_pool_size = 2',
      'max_client_conn = 100',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      'ignore_startup_parameters = extra_float_digits,options,statement_timeout',
      '',
    ].join('\n'),
  )
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim())
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim())
  for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(join(dir, f), uid, gid)
  bouncer = spawn(PGBOUNCER, [join(dir, 'pgbouncer.ini')], { uid, gid, stdio: 'ignore', cwd: dir })
  bouncer.on('error', () => {})
  await waitForPort(port, 10_000)
}

beforeAll(async () => {
  // Installs Debian's pgbouncer when missing (as root), else fails naming the package.
  ensurePackages([{ binary: PGBOUNCER, pkg: 'pgbouncer' }], () => {})
  lab = await startLab({ nodes: 1, redis: false })
  const primary = await lab.waitForPrimary()
  await startPgBouncer(primary.port)
  db = createPgRouter({
    hosts: [{ host: '127.0.0.1', port }],
    connection: lab.postgres,
    pool: { max: 8 },
  })
  await db.ready()
  await db.write('CREATE TABLE bouncer_t (id serial PRIMARY KEY, v text NOT NULL)')
})

afterAll(async () => {
  await db?.close()
  if (bouncer?.pid && bouncer.exitCode === null) {
    bouncer.kill('SIGTERM')
    await new Promise((r) => {
      const t = setTimeout(() => {
        bouncer?.kill('SIGKILL')
        r(undefined)
      }, 3_000)
      bouncer?.once('exit', () => {
        clearTimeout(t)
        r(undefined)
      })
    })
  }
  await lab?.down()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

describe('the router through PgBouncer (transaction pooling)', () => {
  it('static discovery sees the primary through PgBouncer (pg_is_in_recovery passes through)', async () => {
    const { user, password, database } = lab.postgres
    const d = createStaticDiscovery({
      hosts: [{ host: '127.0.0.1', port }],
      connection: { user, password, database },
    })
    try {
      const r = await d.discover()
      expect(r.members).toMatchObject([{ name: `127.0.0.1:${port}`, role: 'primary', state: 'running' }])
    } finally {
      await d.close()
    }
    expect(db.topology().primary?.port).toBe(port)
  })

  it('writes, parameterized reads, and many concurrent statements over 2 server connections', async () => {
    const ids = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        db.write<{ id: number }>('INSERT INTO bouncer_t (v) VALUES ($1) RETURNING id', [`row ${i}`]),
      ),
    )
    expect(new Set(ids.map((r) => r.rows[0]!.id)).size).toBe(40)
    const reads = await Promise.all(
      ids.map((r) => db.read<{ v: string }>('SELECT v FROM bouncer_t WHERE id = $1', [r.rows[0]!.id])),
    )
    expect(reads.map((r) => r.rows[0]!.v).sort()).toEqual(
      Array.from({ length: 40 }, (_, i) => `row ${i}`).sort(),
    )
  })

  it('transactions commit and roll back; SET LOCAL stays inside its transaction', async () => {
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        db.transaction(async (tx) => {
          await tx.query("SET LOCAL application_name = 'in-tx'")
          const r = await tx.query<{ a: string }>('SELECT current_setting($1) AS a', ['application_name'])
          expect(r.rows[0]!.a).toBe('in-tx')
          await tx.query('INSERT INTO bouncer_t (v) VALUES ($1)', [`tx ${i}`])
        }),
      ),
    )
    const err = await db
      .transaction(async (tx) => {
        await tx.query("INSERT INTO bouncer_t (v) VALUES ('rolled back')")
        throw new Error('abort')
      })
      .catch((e: unknown) => e)
    expect((err as Error).message).toBe('abort')
    const r = await db.read<{ n: string }>(
      "SELECT count(*) FILTER (WHERE v LIKE 'tx %') AS n, count(*) FILTER (WHERE v = 'rolled back') AS rb FROM bouncer_t",
    )
    expect(r.rows[0]).toEqual({ n: '10', rb: '0' })
  })

  it('read-your-writes sessions work (the LSN is server-wide, whatever server connection ran the write)', async () => {
    const s = db.session()
    await s.write("INSERT INTO bouncer_t (v) VALUES ('session')")
    expect(s.token).not.toBe('')
    const again = db.session(s.token)
    const r = await again.read("SELECT count(*)::int AS n FROM bouncer_t WHERE v = 'session'")
    expect(r.rows[0]).toEqual({ n: 1 })
  })

  it('PgBouncer multiplexes: at most 2 server connections served all of it', async () => {
    const admin = new pg.Client({
      host: '127.0.0.1',
      port,
      user: lab.postgres.user,
      password: lab.postgres.password,
      database: 'pgbouncer',
    })
    await admin.connect()
    try {
      // The admin console speaks only the simple protocol: no parameters here.
      const pools = await admin.query('SHOW POOLS')
      const pool = pools.rows.find((p) => p.database === lab.postgres.database)
      expect(pool).toBeDefined()
      expect(pool.pool_mode).toBe('transaction')
      expect(Number(pool.sv_active) + Number(pool.sv_idle) + Number(pool.sv_used)).toBeLessThanOrEqual(2)
      // ...while the router kept more client connections than that open (40 concurrent writes).
      const clients = await admin.query('SHOW CLIENTS')
      expect(clients.rows.filter((c) => c.database === lab.postgres.database).length).toBeGreaterThan(2)
    } finally {
      await admin.end()
    }
  })
})
