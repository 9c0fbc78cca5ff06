/**
 * Overhead of @resilient/pg-router over a plain pg.Pool, side by side in one run, on the
 * same PostgreSQL member (a 1-node lab, so db.read falls back to the primary too):
 *   pg.Pool.query | db.read | db.write   x   `SELECT 1` | a one-row primary-key read
 *   sequentially (one query at a time) and with concurrency 8 (8 queries in flight),
 * plus a second, identical pg.Pool (`pg.Pool#2`): the control, whose ratio to the first shows
 * how much of a difference this run can measure at all. Same pool size (8) for all. Cases
 * are interleaved in small blocks (BLOCK calls of each case per round, a new random order each
 * round), so noise from the rest of the machine falls on every case alike; every call is
 * timed on its own. No forced garbage collection while timing (see measure()).
 *
 * Run:  npx tsc -b packages/lab packages/pg-router && node --expose-gc bench/pg-router/pg.bench.mjs
 * Env:  ROUNDS (default 1000 sequential; concurrent cases run ROUNDS / 2), BLOCK (default 20
 *       calls per case per round; a concurrent call is a batch of 8 queries)
 * Out:  a markdown table on stdout and bench/out/pg-router.json
 *
 * Reported per case: the median time per call over every timed call, its ratio to pg.Pool
 * (target <= 1.05) with the same ratio in each third of the run (how steady it is), p99 over
 * every call with its difference to pg.Pool's p99 (target within 0.1 ms), the same difference
 * taken in each tenth of the run (median of the ten: a few bursts of noise on one case's
 * block move the first a lot, this one little), and this process's CPU time per call
 * (user + system): the client-side cost. The means are in the JSON. The
 * server and the bench share the machine: the bench pins itself to core 0 and the lab's servers
 * to the last core (bench/lib/pin.mjs; PIN=0 turns that off), and it should still run on a
 * quiet machine (check `uptime`); the load average is printed with the table.
 */
import { loadavg } from 'node:os'
import pg from 'pg'
import { startLab } from '../../packages/lab/dist/index.js'
import { createPgRouter } from '../../packages/pg-router/dist/index.js'
import { fmtNs, markdownTable, median, percentile, writeJson } from '../lib/measure.mjs'
import { pinApart } from '../lib/pin.mjs'

const ROUNDS = Number(process.env.ROUNDS ?? 1000)
const BLOCK = Number(process.env.BLOCK ?? 20)
const WARMUP_ROUNDS = 5
/** State of the seeded shuffle (see shuffled()). */
let seed = 0x9e3779b9
const POOL_MAX = 8
const CONCURRENCY = 8
const ROWS = 100

const gc = typeof globalThis.gc === 'function' ? globalThis.gc : () => {}

const loadBefore = loadavg()
  .map((l) => l.toFixed(2))
  .join(' ')
const lab = await startLab({ nodes: 1, redis: false })
let pool
let pool2
let db
let dbW
let pinning = 'not pinned'
try {
  const primary = await lab.waitForPrimary()
  pinning = pinApart(lab)
  const { user, password, database } = lab.postgres
  pool = new pg.Pool({ host: primary.host, port: primary.port, user, password, database, max: POOL_MAX })
  pool2 = new pg.Pool({ host: primary.host, port: primary.port, user, password, database, max: POOL_MAX })
  // Two routers, one for the db.read cases and one for the db.write cases, so that each pool
  // in the run (pool, pool2, db's, dbW's) serves the same share of the calls: a connection
  // used more often answers faster (its backend is not asleep), which would favour one side.
  const routerOptions = {
    patroni: { endpoints: lab.patroni.endpoints },
    connection: { user, password, database },
    pool: { max: POOL_MAX },
  }
  db = createPgRouter(routerOptions)
  dbW = createPgRouter(routerOptions)
  await db.ready()
  await dbW.ready()
  await pool.query('CREATE TABLE bench_kv (id int PRIMARY KEY, v text NOT NULL)')
  await pool.query(`INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) g`)
  await pool.query('ANALYZE bench_kv')

  let k = 0
  const key = () => [(k++ % ROWS) + 1]
  const ROW_SQL = 'SELECT v FROM bench_kv WHERE id = $1'
  const single = {
    'pg.Pool SELECT 1': () => pool.query('SELECT 1'),
    'pg.Pool#2 SELECT 1': () => pool2.query('SELECT 1'),
    'db.read SELECT 1': () => db.read('SELECT 1'),
    'db.write SELECT 1': () => dbW.write('SELECT 1'),
    'pg.Pool row': () => pool.query(ROW_SQL, key()),
    'pg.Pool#2 row': () => pool2.query(ROW_SQL, key()),
    'db.read row': () => db.read(ROW_SQL, key()),
    'db.write row': () => dbW.write(ROW_SQL, key()),
  }
  const batch = (fn) => () => Promise.all(Array.from({ length: CONCURRENCY }, fn))
  const concurrent = Object.fromEntries(
    Object.entries(single).map(([name, fn]) => [`${name} x${CONCURRENCY}`, batch(fn)]),
  )

  // Fill every pool to POOL_MAX connections before measuring.
  await Promise.all(Array.from({ length: 4 }, () => concurrent['pg.Pool SELECT 1 x8']()))
  await Promise.all(Array.from({ length: 4 }, () => concurrent['pg.Pool#2 SELECT 1 x8']()))
  await Promise.all(Array.from({ length: 4 }, () => concurrent['db.read SELECT 1 x8']()))
  await Promise.all(Array.from({ length: 4 }, () => concurrent['db.write SELECT 1 x8']()))

  const seq = await measure(single, ROUNDS)
  console.error('sequential cases done')
  const conc = await measure(concurrent, Math.max(1, Math.floor(ROUNDS / 2)))
  const rows = []
  const json = {}
  for (const [results, label] of [
    [seq, 'sequential'],
    [conc, `concurrency ${CONCURRENCY}`],
  ]) {
    for (const [name, s] of Object.entries(results)) {
      const baseName = name.replace(/^(db\.(read|write)|pg\.Pool#2)/, 'pg.Pool')
      const base = results[baseName]
      const r = s.median / base.median
      const p99Diff = (s.p99 - base.p99) / 1e6
      // a burst of noise on the machine lands on one case's block: the median of the ten
      // per-tenth differences is what stays when a few such bursts are set aside
      const p99DiffTenths = median(s.tenthsP99.map((v, i) => v - base.tenthsP99[i])) / 1e6
      const ms = (v) => `${v >= 0 ? '+' : ''}${v.toFixed(3)} ms`
      rows.push([
        label,
        name,
        fmtNs(s.median),
        name === baseName ? '1 (baseline)' : r.toFixed(3),
        name === baseName ? '' : s.thirds.map((t, i) => (t / base.thirds[i]).toFixed(3)).join(' '),
        fmtNs(s.p99),
        name === baseName ? '' : ms(p99Diff),
        name === baseName ? '' : ms(p99DiffTenths),
        fmtNs(s.cpu),
        name === baseName
          ? ''
          : `${s.cpu - base.cpu >= 0 ? '+' : ''}${((s.cpu - base.cpu) / 1000).toFixed(2)} µs`,
      ])
      json[name] = {
        median: s.median,
        mean: s.mean,
        p99: s.p99,
        ratio: r,
        ratioByThird: s.thirds.map((t, i) => t / base.thirds[i]),
        meanRatio: s.mean / base.mean,
        p99DiffMs: p99Diff,
        p99DiffMsMedianOfTenths: p99DiffTenths,
        clientCpu: s.cpu,
        clientCpuDiff: s.cpu - base.cpu,
        calls: s.calls,
      }
    }
  }
  console.log(
    `\nload average before/after: ${loadBefore} / ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  )
  console.log(pinning)
  console.log(
    `\npg-router vs pg.Pool, same member, pool max ${POOL_MAX}; sequential: ${ROUNDS} rounds x ${BLOCK} calls per case, concurrent: ${Math.floor(ROUNDS / 2)} rounds x ${BLOCK} batches of ${CONCURRENCY}\n`,
  )
  console.log(
    markdownTable(
      [
        'mode',
        'case',
        'median time per call',
        'ratio to pg.Pool',
        'ratio in each third',
        'p99 per call',
        'p99 - pg.Pool p99',
        'same, median over tenths',
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
    block: BLOCK,
    pinning,
    poolMax: POOL_MAX,
    results: json,
  })
  console.log(`\nwrote ${file}`)
} finally {
  await db?.close()
  await dbW?.close()
  await pool?.end()
  await pool2?.end()
  await lab.down()
}

/** A new random order (Fisher-Yates, seeded: the same sequence of orders in every run). */
function shuffled(names) {
  const a = [...names]
  for (let i = a.length - 1; i > 0; i--) {
    seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0
    const j = seed % (i + 1)
    ;[a[i], a[j]] = [a[j], a[i]]
  }
  return a
}

/**
 * Interleaved in small blocks: each round runs BLOCK calls of every case, in a new random order
 * (so no case always follows the same other one),
 * so every case sees the same machine (noise from the other processes on the two cores lands
 * on all of them alike). Every call is timed on its own.
 * -> { name: { median, p99, mean (over all calls, ns), cpu (ns per call), thirds (median per
 *      third of the run), calls } }
 */
async function measure(cases, rounds) {
  const names = Object.keys(cases)
  // preallocated: no array growth (and its garbage) while timing
  const calls = Object.fromEntries(names.map((n) => [n, new Float64Array(rounds * BLOCK)]))
  const filled = Object.fromEntries(names.map((n) => [n, 0]))
  const cpuUs = Object.fromEntries(names.map((n) => [n, 0]))
  // One full collection before the phase, none during it: a forced gc() every 50 rounds (as
  // this bench did) left every case colder after each one, the router's larger footprint more
  // than pg.Pool's (client CPU +7 to +11 µs per call instead of +2 to +3, p99 +0.25 to
  // +0.45 ms instead of +0.01 to +0.02 ms, in one run of each). A service never does that.
  gc()
  for (let r = 0; r < WARMUP_ROUNDS + rounds; r++) {
    const timed = r >= WARMUP_ROUNDS
    for (const name of shuffled(names)) {
      const fn = cases[name]
      const times = calls[name]
      let k = filled[name]
      const c0 = process.cpuUsage()
      for (let i = 0; i < BLOCK; i++) {
        const t0 = process.hrtime.bigint()
        await fn()
        const t = Number(process.hrtime.bigint() - t0)
        if (timed) times[k++] = t
      }
      if (timed) {
        const c = process.cpuUsage(c0)
        cpuUs[name] += c.user + c.system
        filled[name] = k
      }
    }
  }
  return Object.fromEntries(
    names.map((n) => {
      const all = Array.from(calls[n])
      const third = Math.floor(all.length / 3)
      return [
        n,
        {
          median: median(all),
          p99: percentile(all, 99),
          mean: all.reduce((a, b) => a + b, 0) / all.length,
          cpu: (cpuUs[n] * 1000) / all.length,
          thirds: [0, 1, 2].map((t) => median(all.slice(t * third, (t + 1) * third))),
          // p99 in each tenth of the run (tenths of every case cover the same stretch of time)
          tenthsP99: Array.from({ length: 10 }, (_, t) => {
            const w = Math.floor(all.length / 10)
            return percentile(all.slice(t * w, (t + 1) * w), 99)
          }),
          calls: all.length,
        },
      ]
    }),
  )
}
