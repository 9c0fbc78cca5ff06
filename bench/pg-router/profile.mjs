/**
 * Where the client-side CPU of one query goes: pg.Pool.query vs db.write / db.read, by
 * package, from V8's sampling profiler (node:inspector) over 20 000 sequential `SELECT 1`.
 * Self time is attributed to pg-router, core, pg, pg-pool, pg-protocol, node internals and
 * native frames (socket writes show up as `native:writeBuffer`).
 *
 * Run:  npx tsc -b packages/lab packages/pg-router && node bench/pg-router/profile.mjs
 * (pinned like pg.bench.mjs: this process on core 0, the lab on the last core; PIN=0: not)
 * Env:  CALLS (default 20000), CONCURRENCY (default 1: queries in flight per call),
 *       DETAIL=1 (also the top functions of pg-router and @resilient/core)
 * Out:  one table per case on stdout (share of busy samples, and µs per call estimated from
 *       this process's CPU time), after a count of pg `client.query` calls, socket writes and
 *       `setTimeout` calls per call (over 1 000 calls).
 */
import { Session } from 'node:inspector/promises'
import net from 'node:net'
import pg from 'pg'
import { startLab } from '../../packages/lab/dist/index.js'
import { createPgRouter } from '../../packages/pg-router/dist/index.js'
import { pinApart } from '../lib/pin.mjs'

const CALLS = Number(process.env.CALLS ?? 20_000)
/** Queries in flight per call (a call is one batch). */
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 1)
/** Also list the top functions of pg-router and core. */
const DETAIL = process.env.DETAIL === '1'

function category(frame) {
  const u = frame.url
  if (frame.functionName === '(idle)') return 'idle'
  if (u.includes('pg-router/dist')) return 'pg-router'
  if (u.includes('core/dist')) return '@resilient/core'
  if (u.includes('pg-pool')) return 'pg-pool'
  if (u.includes('pg-protocol')) return 'pg-protocol'
  if (u.includes('/pg/lib')) return 'pg'
  if (u.startsWith('node:')) return 'node internals'
  if (u === '') return `native:${frame.functionName}`
  return 'other'
}

/** Counts what one call does on the wire and in timers, by wrapping the prototypes briefly. */
async function countPerCall(fn, n = 1_000) {
  const counts = { query: 0, socketWrite: 0, setTimeout: 0 }
  const q = pg.Client.prototype.query
  const w = net.Socket.prototype.write
  const t = globalThis.setTimeout
  pg.Client.prototype.query = function (...a) {
    counts.query++
    return q.apply(this, a)
  }
  net.Socket.prototype.write = function (...a) {
    counts.socketWrite++
    return w.apply(this, a)
  }
  globalThis.setTimeout = function (...a) {
    counts.setTimeout++
    return t.apply(this, a)
  }
  try {
    for (let i = 0; i < n; i++) await fn()
  } finally {
    pg.Client.prototype.query = q
    net.Socket.prototype.write = w
    globalThis.setTimeout = t
  }
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, Math.round((v / n) * 100) / 100]))
}

async function profile(name, one) {
  const fn = CONCURRENCY === 1 ? one : () => Promise.all(Array.from({ length: CONCURRENCY }, one))
  for (let i = 0; i < 2_000; i++) await fn()
  const per = await countPerCall(fn)
  const s = new Session()
  s.connect()
  await s.post('Profiler.enable')
  await s.post('Profiler.start')
  const c0 = process.cpuUsage()
  for (let i = 0; i < CALLS; i++) await fn()
  const c = process.cpuUsage(c0)
  const { profile } = await s.post('Profiler.stop')
  s.disconnect()
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const cat = new Map()
  for (const id of profile.samples) {
    const f = byId.get(id).callFrame
    const c0k = category(f)
    const k =
      DETAIL && (c0k === 'pg-router' || c0k === '@resilient/core')
        ? `${c0k} ${f.functionName || '(anon)'} ${f.url.split('/').pop()}:${f.lineNumber + 1}`
        : c0k
    cat.set(k, (cat.get(k) ?? 0) + 1)
  }
  const busy = profile.samples.length - (cat.get('idle') ?? 0)
  const us = (c.user + c.system) / CALLS
  console.log(
    `\n${name} x${CONCURRENCY}: ${us.toFixed(1)} µs client CPU per call (of ${CONCURRENCY} queries)`,
  )
  console.log(
    `  per call: ${per.query} client.query, ${per.socketWrite} socket writes, ${per.setTimeout} setTimeout`,
  )
  for (const [k, n] of [...cat].sort((a, b) => b[1] - a[1])) {
    if (k === 'idle' || n / busy < 0.005) continue
    console.log(
      `  ${k.padEnd(28)} ${((100 * n) / busy).toFixed(1).padStart(5)} %  ~${((us * n) / busy).toFixed(2)} µs`,
    )
  }
}

const lab = await startLab({ nodes: 1, redis: false })
let pool
let db
try {
  const p = await lab.waitForPrimary()
  console.log(pinApart(lab))
  const { user, password, database } = lab.postgres
  pool = new pg.Pool({ host: p.host, port: p.port, user, password, database, max: 8 })
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user, password, database },
    pool: { max: 8 },
  })
  await db.ready()
  await profile('pg.Pool.query', () => pool.query('SELECT 1'))
  await profile('db.write', () => db.write('SELECT 1'))
  await profile('db.read', () => db.read('SELECT 1'))
  await profile('pg.Pool.query, one parameter', () => pool.query('SELECT $1::int AS n', [1]))
  await profile('db.write, one parameter', () => db.write('SELECT $1::int AS n', [1]))
} finally {
  await db?.close()
  await pool?.end()
  await lab.down()
}
