/**
 * Overhead of @resilient/pg-router over a plain pg.Pool, side by side in one run, on the
 * same PostgreSQL member (a 1-node lab, so db.read falls back to the primary too):
 *   pg.Pool.query | db.read | db.write   x   `SELECT 1` | a one-row primary-key read
 *   sequentially (one query at a time) and with concurrency 8 (8 queries in flight).
 * Same pool size (8) for both. Cases run in interleaved rounds (rotated order each round).
 *
 * Run:  npx tsc -b packages/lab packages/pg-router && node --expose-gc bench/pg-router/pg.bench.mjs
 * Env:  ROUNDS (default 12), ITERATIONS (default 1000 sequential calls per case per round;
 *       concurrent cases run ITERATIONS / 4 batches of 8)
 * Out:  a markdown table on stdout and bench/out/pg-router.json
 *
 * Reported per case: median over rounds of the mean time per call (per batch of 8 for the
 * concurrent cases), its ratio to pg.Pool (target <= 1.05), p99 over every timed call with
 * its difference to pg.Pool's p99 (target within 0.1 ms), and this process's CPU time per
 * call (user + system, median over rounds): the client-side cost, less sensitive than wall
 * time to what else runs on the machine. The server and the bench share the same cores:
 * run it on a quiet machine (check `uptime`), the load average is printed with the table.
 */
import { loadavg } from 'node:os'
import pg from 'pg'
import { startLab } from '../../packages/lab/dist/index.js'
import { createPgRouter } from '../../packages/pg-router/dist/index.js'
import { fmtNs, markdownTable, median, percentile, writeJson } from '../lib/measure.mjs'

const ROUNDS = Number(process.env.ROUNDS ?? 12)
const ITERATIONS = Number(process.env.ITERATIONS ?? 1000)
const WARMUP_ROUNDS = 2
const POOL_MAX = 8
const CONCURRENCY = 8
const ROWS = 100

const gc = typeof globalThis.gc === 'function' ? globalThis.gc : () => {}

const loadBefore = loadavg()
  .map((l) => l.toFixed(2))
  .join(' ')
const lab = await startLab({ nodes: 1, redis: false })
let pool
let db
try {
  const primary = await lab.waitForPrimary()
  const { user, password, database } = lab.postgres
  pool = new pg.Pool({ host: primary.host, port: primary.port, user, password, database, max: POOL_MAX })
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user, password, database },
    pool: { max: POOL_MAX },
  })
  await db.ready()
  await pool.query('CREATE TABLE bench_kv (id int PRIMARY KEY, v text NOT NULL)')
  await pool.query(`INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) g`)
  await pool.query('ANALYZE bench_kv')

  let k = 0
  const key = () => [(k++ % ROWS) + 1]
  const ROW_SQL = 'SELECT v FROM bench_kv WHERE id = $1'
  const single = {
    'pg.Pool SELECT 1': () => pool.query('SELECT 1'),
    'db.read SELECT 1': () => db.read('SELECT 1'),
    'db.write SELECT 1': () => db.write('SELECT 1'),
    'pg.Pool row': () => pool.query(ROW_SQL, key()),
    'db.read row': () => db.read(ROW_SQL, key()),
    'db.write row': () => db.write(ROW_SQL, key()),
  }
  const batch = (fn) => () => Promise.all(Array.from({ length: CONCURRENCY }, fn))
  const concurrent = Object.fromEntries(
    Object.entries(single).map(([name, fn]) => [`${name} x${CONCURRENCY}`, batch(fn)]),
  )

  // Fill both pools to POOL_MAX connections before measuring.
  await Promise.all(Array.from({ length: 4 }, () => concurrent['pg.Pool SELECT 1 x8']()))
  await Promise.all(Array.from({ length: 4 }, () => concurrent['db.write SELECT 1 x8']()))

  const seq = await measure(single, ITERATIONS)
  const conc = await measure(concurrent, Math.max(1, Math.floor(ITERATIONS / 4)))
  const rows = []
  const json = {}
  for (const [results, label] of [
    [seq, 'sequential'],
    [conc, `concurrency ${CONCURRENCY}`],
  ]) {
    for (const [name, s] of Object.entries(results)) {
      const baseName = name.replace(/^db\.(read|write)/, 'pg.Pool')
      const base = results[baseName]
      const r = s.median / base.median
      const p99Diff = (s.p99 - base.p99) / 1e6
      rows.push([
        label,
        name,
        fmtNs(s.median),
        name === baseName ? '1 (baseline)' : r.toFixed(3),
        fmtNs(s.p99),
        name === baseName ? '' : `${p99Diff >= 0 ? '+' : ''}${p99Diff.toFixed(3)} ms`,
        fmtNs(s.cpu),
        name === baseName
          ? ''
          : `${s.cpu - base.cpu >= 0 ? '+' : ''}${((s.cpu - base.cpu) / 1000).toFixed(2)} µs`,
      ])
      json[name] = {
        median: s.median,
        p99: s.p99,
        ratio: r,
        p99DiffMs: p99Diff,
        clientCpu: s.cpu,
        clientCpuDiff: s.cpu - base.cpu,
        rounds: s.rounds,
        calls: s.calls,
      }
    }
  }
  console.log(
    `\nload average before/after: ${loadBefore} / ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  )
  console.log(
    `\npg-router vs pg.Pool, same member, pool max ${POOL_MAX}, ${ROUNDS} rounds x ${ITERATIONS} calls (concurrent: batches of ${CONCURRENCY})\n`,
  )
  console.log(
    markdownTable(
      [
        'mode',
        'case',
        'median time per call',
        'ratio to pg.Pool',
        'p99 per call',
        'p99 - pg.Pool p99',
        'client CPU per call',
        'CPU - pg.Pool',
      ],
      rows,
    ),
  )
  const file = writeJson('pg-router', {
    loadBefore,
    loadAfter: loadavg(),
    rounds: ROUNDS,
    iterations: ITERATIONS,
    poolMax: POOL_MAX,
    results: json,
  })
  console.log(`\nwrote ${file}`)
} finally {
  await db?.close()
  await pool?.end()
  await lab.down()
}

/**
 * Interleaved rounds; every call timed on its own.
 * -> { name: { median (of per-round means, ns), p99 (over all calls, ns), rounds, calls } }
 */
async function measure(cases, iterations) {
  const names = Object.keys(cases)
  const means = Object.fromEntries(names.map((n) => [n, []]))
  const cpu = Object.fromEntries(names.map((n) => [n, []]))
  const calls = Object.fromEntries(names.map((n) => [n, []]))
  for (let r = 0; r < WARMUP_ROUNDS + ROUNDS; r++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(r + j) % names.length]
      const fn = cases[name]
      gc()
      const times = new Array(iterations)
      const c0 = process.cpuUsage()
      for (let i = 0; i < iterations; i++) {
        const t0 = process.hrtime.bigint()
        await fn()
        times[i] = Number(process.hrtime.bigint() - t0)
      }
      const c = process.cpuUsage(c0)
      if (r >= WARMUP_ROUNDS) {
        cpu[name].push(((c.user + c.system) * 1000) / iterations)
        means[name].push(times.reduce((a, b) => a + b, 0) / iterations)
        for (const t of times) calls[name].push(t)
      }
    }
  }
  return Object.fromEntries(
    names.map((n) => [
      n,
      {
        median: median(means[n]),
        p99: percentile(calls[n], 99),
        cpu: median(cpu[n]),
        rounds: means[n].length,
        calls: calls[n].length,
      },
    ]),
  )
}
