#!/usr/bin/env node
// Failover, side by side on one lab: a 3-node Patroni cluster (synchronous_mode: true). Each
// round starts one client fresh, runs 4 concurrent writers of autocommit INSERTs with unique
// ids, kills the primary (kill -9 of Patroni and the postmaster) and measures:
//   - kill -> first acknowledged write, and new leader visible in /cluster -> first write
//     (the cluster is polled every 20 ms),
//   - failed attempts (and those after the first acknowledged write),
//   - acknowledged writes lost (acknowledged ids missing on the new primary),
//   - rows committed although their client saw an error ("outcome unknown").
// Clients, rotating round by round:
//   pg-router    @resilient/pg-router with its defaults (Patroni discovery), pool max 4
//   haproxy+pg   node-postgres Pool (max 4) through HAProxy configured as Patroni documents:
//                option httpchk OPTIONS /primary, http-check expect status 200,
//                default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
//   postgres.js  postgres (max 4) with three hosts and target_session_attrs: 'primary'
// The killed member is started again and rejoins before the next round.
//
//   node bench/failover/failover.bench.mjs      (FAILOVER_KILLS=5 per client; FAILOVER_CLIENTS=pg-router,haproxy+pg,postgres.js)
//
// Prints a markdown table; writes bench/out/failover.json.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import pg from 'pg'
import postgres from 'postgres'

const HERE = dirname(fileURLToPath(import.meta.url))
const OUT = join(HERE, '..', 'out')
const WRITERS = 4
const WARMUP_MS = 2000
const AFTER_RECOVERY_MS = 3000
const RECOVERY_TIMEOUT_MS = 60_000
const HAPROXY = '/usr/sbin/haproxy'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

// ------------------------------------------------------------------ clients

/** Each client: { name, write(id) -> Promise, close() }. Created fresh for each round. */
const CLIENTS = {
  async 'pg-router'(lab) {
    const { createPgRouter } = await import('@resilient/pg-router')
    const db = createPgRouter({
      patroni: { endpoints: lab.patroni.endpoints },
      connection: lab.postgres,
      pool: { max: WRITERS },
    })
    await db.ready()
    return {
      write: (id, round) =>
        db.write('INSERT INTO failover_writes (id, client, round) VALUES ($1, $2, $3)', [
          id,
          'pg-router',
          round,
        ]),
      close: () => db.close(),
    }
  },

  async 'haproxy+pg'(lab, shared) {
    shared.haproxy ??= await startHaproxy(lab)
    const pool = new pg.Pool({
      host: '127.0.0.1',
      port: shared.haproxy.port,
      ...lab.postgres,
      max: WRITERS,
      // Usual production bounds: a connect attempt and a query cannot hang for ever.
      connectionTimeoutMillis: 2000,
      query_timeout: 5000,
    })
    pool.on('error', () => {}) // idle clients dying with the primary: expected here
    await waitUntil(async () => {
      await pool.query('SELECT 1')
      return true
    }, 30_000)
    return {
      write: (id, round) =>
        pool.query('INSERT INTO failover_writes (id, client, round) VALUES ($1, $2, $3)', [
          id,
          'haproxy+pg',
          round,
        ]),
      close: () => pool.end(),
    }
  },

  async 'postgres.js'(lab) {
    const sql = postgres({
      host: lab.members.map((m) => `127.0.0.1:${m.port}`).join(','),
      user: lab.postgres.user,
      pass: lab.postgres.password,
      database: lab.postgres.database,
      target_session_attrs: 'primary',
      max: WRITERS,
      connect_timeout: 2,
      onnotice: () => {},
    })
    await sql`SELECT 1`
    return {
      write: (id, round) =>
        sql`INSERT INTO failover_writes (id, client, round) VALUES (${id}, ${'postgres.js'}, ${round})`,
      close: () => sql.end({ timeout: 2 }),
    }
  },
}

async function startHaproxy(lab) {
  const dir = mkdtempSync(join(tmpdir(), 'resilient-haproxy-'))
  const port = await freePort()
  const servers = lab.members
    .map((m) => {
      const api = new URL(m.apiUrl)
      return `  server ${m.name} 127.0.0.1:${m.port} maxconn 100 check port ${api.port}`
    })
    .join('\n')
  // Patroni's documented HAProxy configuration (haproxy.cfg in the Patroni repository).
  const cfg = `global
  maxconn 200

defaults
  mode tcp
  log global
  retries 2
  timeout queue 5s
  timeout connect 4s
  timeout client 30m
  timeout server 30m
  timeout check 5s

listen primary
  bind 127.0.0.1:${port}
  option httpchk OPTIONS /primary
  http-check expect status 200
  default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
${servers}
`
  writeFileSync(join(dir, 'haproxy.cfg'), cfg)
  const child = spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (c) => {
    stderr += c
  })
  await waitUntil(
    () =>
      new Promise((resolve, reject) => {
        if (child.exitCode !== null) return reject(new Error(`haproxy exited: ${stderr}`))
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy()
          resolve(true)
        })
        s.on('error', reject)
      }),
    10_000,
  )
  return {
    port,
    pid: child.pid,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit')
        process.kill(child.pid, 'SIGTERM')
        await Promise.race([exited, sleep(5000)])
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL')
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

async function waitUntil(fn, timeoutMs, intervalMs = 200) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline)
      throw new Error(`timed out: ${last?.message ?? 'condition not met'}`, { cause: last })
    await sleep(intervalMs)
  }
}

// ------------------------------------------------------------------ one round

let nextId = 1

async function round(lab, clientName, roundNo, shared) {
  await lab.waitForReplicas(2, { timeoutMs: 120_000 })
  const client = await CLIENTS[clientName](lab, shared)
  const t0 = performance.now()
  const now = () => performance.now() - t0
  const acks = [] // { id, sentAt, t }
  const failures = [] // { id, sentAt, t, code }
  let running = true
  const writer = async () => {
    while (running) {
      const id = nextId++
      const sentAt = now()
      try {
        await client.write(id, roundNo)
        acks.push({ id, sentAt, t: now() })
      } catch (err) {
        failures.push({ id, sentAt, t: now(), code: errorCode(err) })
        await sleep(20) // an application's minimal pause before its next attempt
      }
    }
  }
  const writers = Array.from({ length: WRITERS }, writer)
  try {
    await sleep(WARMUP_MS)
    // The kill time is taken once both processes are gone (killPrimary waits for that): a
    // write sent earlier may still have been acknowledged by the old primary.
    const killStartedAt = now()
    const oldLeader = await lab.killPrimary()
    const killedAt = now()
    let leaderAt
    let newLeader
    let firstAck
    const deadline = killedAt + RECOVERY_TIMEOUT_MS
    while (now() < deadline) {
      if (leaderAt === undefined) {
        const cluster = await lab.cluster().catch(() => undefined)
        const leader = cluster?.members.find((m) => m.role === 'leader' && m.state === 'running')
        if (leader && leader.name !== oldLeader) {
          leaderAt = now()
          newLeader = leader.name
        }
      }
      // The dead primary cannot acknowledge a write sent after the kill, nor one answered
      // after the new leader showed up.
      firstAck = acks.find(
        (a) => a.t > killedAt && (a.sentAt > killedAt || (leaderAt !== undefined && a.t >= leaderAt)),
      )
      if (firstAck && leaderAt !== undefined) break
      await sleep(20)
    }
    if (firstAck) await sleep(AFTER_RECOVERY_MS)
    running = false
    // In-flight attempts end within their own bounds (pg-router: failover.timeoutMs).
    await Promise.race([Promise.all(writers), sleep(35_000)])
    const stoppedAt = now()

    const rows = await lab.sql(`SELECT id FROM failover_writes WHERE round = ${Number(roundNo)}`)
    const found = new Set(rows.map((r) => Number(r[0])))
    const lost = acks.filter((a) => !found.has(a.id)).length
    const committedDespiteError = failures.filter((f) => found.has(f.id)).length
    const after = firstAck ? failures.filter((f) => f.t > firstAck.t) : []
    const codes = {}
    for (const f of failures) if (f.t > killStartedAt) codes[f.code] = (codes[f.code] ?? 0) + 1
    const result = {
      client: clientName,
      round: roundNo,
      oldLeader,
      newLeader,
      leaderVisibleMs: leaderAt === undefined ? null : leaderAt - killedAt,
      killToFirstWriteMs: firstAck ? firstAck.t - killedAt : null,
      leaderToFirstWriteMs: firstAck && leaderAt !== undefined ? firstAck.t - leaderAt : null,
      acknowledged: acks.length,
      failedAttempts: failures.filter((f) => f.t > killStartedAt).length,
      failedAfterRecovery: after.length,
      lost,
      committedDespiteError,
      errorCodes: codes,
      // Writes acknowledged per second over the round after recovery (a stuck pool shows here).
      writesPerSecAfterRecovery: firstAck
        ? acks.filter((a) => a.t > firstAck.t).length / Math.max(0.001, (stoppedAt - firstAck.t) / 1000)
        : 0,
    }
    await rejoin(lab, oldLeader)
    return result
  } finally {
    running = false
    await Promise.race([client.close(), sleep(5000)]).catch(() => {})
  }
}

/**
 * Brings the killed member back as a streaming replica, and any other replica that diverged
 * with it: the lab re-clones a member from the leader (Patroni's POST /reinitialize) when it
 * cannot stream again (a primary killed with WAL its successor never got).
 */
export async function rejoin(lab, name) {
  const back = await lab.startMember(name, { timeoutMs: 150_000 })
  const others = await lab.rejoinReplicas({ timeoutMs: 150_000 })
  for (const r of [back, ...others]) {
    if (r.reinitialized) console.error(`${r.name} was re-cloned from the leader to rejoin (${r.reason})`)
  }
}

function errorCode(err) {
  if (err && typeof err === 'object') {
    if (typeof err.code === 'string' && err.code) return err.code
    if (err.errno) return String(err.errno)
  }
  // node-postgres throws plain Errors (no code) for a lost connection and its own timeouts:
  // name them by message, digits removed so that they group.
  const msg = String(err?.message ?? err)
  if (/timeout/i.test(msg)) return 'timeout'
  return msg.replace(/\d+/g, 'N').slice(0, 60)
}

// ------------------------------------------------------------------ report

const median = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return null
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const range = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x))
  if (s.length === 0) return '-'
  return `${(Math.min(...s) / 1000).toFixed(2)} to ${(Math.max(...s) / 1000).toFixed(2)} s`
}

export function summarizeFailover(results, clients) {
  const rows = clients.map((name) => {
    const rs = results.filter((r) => r.client === name)
    return {
      client: name,
      kills: rs.length,
      recovered: rs.filter((r) => r.killToFirstWriteMs !== null).length,
      leaderVisibleMedianMs: median(rs.map((r) => r.leaderVisibleMs)),
      killToFirstWriteMedianMs: median(rs.map((r) => r.killToFirstWriteMs)),
      killToFirstWriteRange: range(rs.map((r) => r.killToFirstWriteMs)),
      leaderToFirstWriteMedianMs: median(rs.map((r) => r.leaderToFirstWriteMs)),
      leaderToFirstWriteRange: range(rs.map((r) => r.leaderToFirstWriteMs)),
      failedAttempts: rs.reduce((a, r) => a + r.failedAttempts, 0),
      failedAfterRecovery: rs.reduce((a, r) => a + r.failedAfterRecovery, 0),
      lost: rs.reduce((a, r) => a + r.lost, 0),
      committedDespiteError: rs.reduce((a, r) => a + r.committedDespiteError, 0),
      acknowledged: rs.reduce((a, r) => a + r.acknowledged, 0),
    }
  })
  return rows
}

/** Error codes seen after the kills, summed per client. */
export function errorTable(results, clients) {
  const lines = ['| client | errors after the kill, by code (all rounds) |', '|---|---|']
  for (const name of clients) {
    const sum = {}
    for (const r of results.filter((x) => x.client === name)) {
      for (const [k, v] of Object.entries(r.errorCodes)) sum[k] = (sum[k] ?? 0) + v
    }
    const cells = Object.entries(sum)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k.replace(/\|/g, '/')}: ${v}`)
      .join('; ')
    lines.push(`| ${name} | ${cells || 'none'} |`)
  }
  return lines.join('\n')
}

export const FAILOVER_NOTES = [
  'Each round: a fresh client, 4 writers of autocommit INSERTs with unique ids (20 ms pause after a failed attempt), kill -9 of the',
  'primary\'s Patroni and postmaster, /cluster polled every 20 ms. "first write": the first acknowledged INSERT the dead primary cannot',
  'have acknowledged (sent after the kill, or answered after the new leader showed up). "lost": acknowledged ids missing on the new',
  'primary afterwards. "committed despite error": rows found whose INSERT failed at the client: an error during a failover means',
  '"outcome unknown" (pg-router says so with E_COMMIT_UNKNOWN). "after recovery": failed attempts after the first acknowledged write',
  "(postgres.js pooled connections left on a standby fail every write with 25006). Ratios are against pg-router's median.",
].join('\n')

export function failoverTable(rows) {
  const base = rows.find((r) => r.client === 'pg-router')?.leaderToFirstWriteMedianMs
  const s = (ms) => (ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(2)} s`)
  const lines = [
    '| client | kills | recovered | kill -> first write (median; range) | new leader visible -> first write (median; range) | vs pg-router | failed attempts (after recovery) | acknowledged | lost | committed despite error |',
    '|---|---:|---:|---|---|---:|---:|---:|---:|---:|',
  ]
  for (const r of rows) {
    const ratio =
      base && r.leaderToFirstWriteMedianMs !== null && base > 0
        ? `${(r.leaderToFirstWriteMedianMs / base).toFixed(1)}x`
        : '-'
    lines.push(
      `| ${r.client} | ${r.kills} | ${r.recovered} | ${s(r.killToFirstWriteMedianMs)}; ${r.killToFirstWriteRange} | ${s(r.leaderToFirstWriteMedianMs)}; ${r.leaderToFirstWriteRange} | ${ratio} | ${r.failedAttempts} (${r.failedAfterRecovery}) | ${r.acknowledged} | ${r.lost} | ${r.committedDespiteError} |`,
    )
  }
  return lines.join('\n')
}

async function main() {
  const kills = Number(process.env.FAILOVER_KILLS ?? 5)
  if (!Number.isInteger(kills) || kills < 1) throw new Error('FAILOVER_KILLS must be a positive integer')
  const clients = (process.env.FAILOVER_CLIENTS ?? 'pg-router,haproxy+pg,postgres.js')
    .split(',')
    .filter(Boolean)
  for (const c of clients) if (!CLIENTS[c]) throw new Error(`unknown client ${c} (FAILOVER_CLIENTS)`)
  const { startLab } = await import('@resilient/lab')
  const started = Date.now()
  console.error(
    `failover bench: ${kills} kill(s) per client, clients ${clients.join(', ')}; starting the lab ...`,
  )
  const lab = await startLab({ nodes: 3, synchronousMode: true, redis: false })
  const shared = {}
  const results = []
  try {
    await lab.sql(
      'CREATE TABLE IF NOT EXISTS failover_writes (id bigint PRIMARY KEY, client text NOT NULL, round integer NOT NULL, at timestamptz NOT NULL DEFAULT now())',
    )
    let roundNo = 0
    for (let k = 0; k < kills; k++) {
      for (const name of clients) {
        roundNo++
        const r = await round(lab, name, roundNo, shared)
        results.push(r)
        console.error(
          `round ${roundNo} ${name}: leader after ${fmt(r.leaderVisibleMs)}, first write after ${fmt(r.killToFirstWriteMs)} (${fmt(r.leaderToFirstWriteMs)} after the leader), failed ${r.failedAttempts} (${r.failedAfterRecovery} after recovery), lost ${r.lost}, committed despite error ${r.committedDespiteError}`,
        )
      }
    }
  } finally {
    await shared.haproxy?.stop().catch(() => {})
    await lab.down()
  }
  const rows = summarizeFailover(results, clients)
  const table = `${failoverTable(rows)}\n\n${errorTable(results, clients)}\n\n${FAILOVER_NOTES}`
  console.log(
    `3-member Patroni 3 cluster, synchronous_mode: true, ttl 10, loop_wait 2; ${kills} kill(s) per client, rotating.\n`,
  )
  console.log(table)
  mkdirSync(OUT, { recursive: true })
  writeFileSync(
    join(OUT, 'failover.json'),
    `${JSON.stringify({ name: 'failover', date: new Date().toISOString(), durationS: Math.round((Date.now() - started) / 1000), kills, clients, summary: rows, rounds: results, markdown: table }, null, 2)}\n`,
  )
}

const fmt = (ms) => (ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(2)} s`)

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
