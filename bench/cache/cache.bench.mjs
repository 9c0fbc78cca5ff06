/**
 * @resilient/cache side by side with raw ioredis, bentocache 1.6 and cache-manager 7
 * (@keyv/redis), against one real Redis from the lab, in ONE run, interleaved rounds:
 *   A. L2 hit (a Redis round trip + JSON.parse; no L1 anywhere) vs raw `ioredis.get` + `JSON.parse`
 *   B. L1 hit (in-process) vs a bare lru-cache get
 *   C. miss + load + write-back (the caller waits for the write-back in every library, ours included)
 *   D. added latency while the breaker is open (Redis SIGSTOPped): per-call times of
 *      `getOrLoad` on a miss vs calling the loader directly, interleaved call by call.
 *   E. the cache's own cost per L2 hit, Redis stubbed in process (an ioredis client whose
 *      `sendCommand` resolves each command at once with the stored entry) vs `mget` +
 *      `JSON.parse` on the same stub.
 * Section A also times `mget` through a bare @resilient/core breaker, to show that piece alone.
 *   F. (only when SECTIONS includes F) what a few µs of client CPU per call cost in wall time on
 *      this machine: raw `mget` + `JSON.parse`, then a busy-wait of 1, 2 or 4 µs before the next
 *      call. Explains why a small CPU cost can show up several times larger in section A.
 *
 * Run:  npx tsc -b packages/cache packages/lab && node --expose-gc bench/cache/cache.bench.mjs
 * Env:  ROUNDS (default 12), REDIS_ITERATIONS (default 2000), MEMORY_ITERATIONS (default 20000),
 *       OPEN_CALLS (default 20000), SECTIONS (default ABCDE: which sections to run),
 *       BASELINE_CACHE (optional: the path of another build's dist/index.js, e.g. a copy of
 *       packages/cache/dist from an older commit with its own @resilient/core; adds a row for
 *       its getOrLoad to sections A, B, C and E, side by side)
 * Out:  markdown tables on stdout and bench/out/cache.json
 *
 * Configured comparably: the same value (a ~1 KB JSON object), the same Redis, TTL 60 s;
 * bentocache and cache-manager with their defaults otherwise. Our cache runs with its
 * defaults (breaker, 100 ms bound, generation check on fills).
 */
import { createRequire } from 'node:module'
import KeyvRedis from '@keyv/redis'
import { BentoCache, bentostore } from 'bentocache'
import { memoryDriver } from 'bentocache/drivers/memory'
import { redisDriver } from 'bentocache/drivers/redis'
import { createCache as createCacheManager } from 'cache-manager'
import { Redis } from 'ioredis'
import { Keyv } from 'keyv'
import { createCache } from '../../packages/cache/dist/index.js'
import { createBreaker } from '../../packages/core/dist/index.js'
import { startLab } from '../../packages/lab/dist/index.js'
import { fmtNs, markdownTable, percentile, ratio, rounds, summarize, writeJson } from '../lib/measure.mjs'

// lru-cache is a dependency of @resilient/cache, not of bench/: resolve it from there.
const { LRUCache } = createRequire(new URL('../../packages/cache/package.json', import.meta.url))('lru-cache')

const ROUNDS = Number(process.env.ROUNDS ?? 12)
const REDIS_ITERATIONS = Number(process.env.REDIS_ITERATIONS ?? 2_000)
const MEMORY_ITERATIONS = Number(process.env.MEMORY_ITERATIONS ?? 20_000)
const OPEN_CALLS = Number(process.env.OPEN_CALLS ?? 20_000)
const SECTIONS = process.env.SECTIONS ?? 'ABCDE'
const TTL = 60_000
const skipped = { median: Number.NaN, p99: Number.NaN, samples: [] }

const value = {
  id: 42,
  title: 'The Left Hand of Darkness',
  authors: [{ id: 7, name: 'Ursula K. Le Guin' }],
  tags: ['sf', 'classic', 'anthropology', 'gender'],
  description: 'x'.repeat(700),
  published: '1969-03-01',
  available: true,
  copies: 3,
}
const loader = async () => value

const started = performance.now()

// Runs one section, or returns NaN figures for each case when SECTIONS leaves it out.
async function section(name, run) {
  if (SECTIONS.includes(name)) return run()
  return new Proxy({}, { get: () => skipped, ownKeys: () => [] })
}
const lab = await startLab({ nodes: 0 })
const { host, port } = lab.redis
const closers = []
try {
  // ------------------------------------------------------------------ clients
  const raw = new Redis({ host, port })
  closers.push(() => raw.quit())
  await raw.set('raw:book', JSON.stringify(value), 'PX', TTL)

  const oursL2 = createCache({ redis: { host, port }, namespace: 'ours-l2', ttlMs: TTL, l1: false })
  const createBaseline = process.env.BASELINE_CACHE
    ? (await import(process.env.BASELINE_CACHE)).createCache
    : undefined
  const baseL2 = createBaseline?.({ redis: { host, port }, namespace: 'base-l2', ttlMs: TTL, l1: false })
  if (baseL2) closers.push(() => baseL2.close())
  const baseL1 = createBaseline?.({ redis: { host, port }, namespace: 'base-l1', ttlMs: TTL })
  if (baseL1) closers.push(() => baseL1.close())
  const oursL1 = createCache({ redis: { host, port }, namespace: 'ours-l1', ttlMs: TTL })
  closers.push(
    () => oursL2.close(),
    () => oursL1.close(),
  )

  const bentoL2 = new BentoCache({
    default: 'c',
    stores: { c: bentostore().useL2Layer(redisDriver({ connection: { host, port } })) },
  })
  const bentoL1 = new BentoCache({
    default: 'c',
    stores: {
      c: bentostore()
        .useL1Layer(memoryDriver({ maxItems: 10_000 }))
        .useL2Layer(redisDriver({ connection: { host, port } })),
    },
  })
  closers.push(
    () => bentoL2.disconnect(),
    () => bentoL1.disconnect(),
  )

  const url = `redis://${host}:${port}`
  const keyvL2 = new Keyv({ store: new KeyvRedis(url), namespace: 'cm-l2' })
  const keyvL2b = new Keyv({ store: new KeyvRedis(url), namespace: 'cm-l1' })
  const cmL2 = createCacheManager({ stores: [keyvL2], ttl: TTL })
  const cmL1 = createCacheManager({ stores: [new Keyv(), keyvL2b], ttl: TTL })
  closers.push(
    () => cmL2.disconnect(),
    () => cmL1.disconnect(),
  )

  const breaker = createBreaker({ name: 'bench' })
  closers.push(() => breaker.shutdown())

  const lru = new LRUCache({ max: 10_000 })
  lru.set('book', value, { ttl: TTL })

  while (
    oursL2.stats().redisStatus !== 'ready' ||
    oursL1.stats().redisStatus !== 'ready' ||
    (baseL2 && baseL2.stats().redisStatus !== 'ready') ||
    (baseL1 && baseL1.stats().redisStatus !== 'ready')
  ) {
    await new Promise((r) => setTimeout(r, 10))
  }
  // prime every cache with the hot key
  for (const c of [oursL2, oursL1, ...(baseL2 ? [baseL2, baseL1] : [])]) {
    await c.getOrLoad('book', loader)
    await c.flush()
  }
  for (const b of [bentoL2, bentoL1]) await b.getOrSet({ key: 'book', factory: loader, ttl: TTL })
  for (const m of [cmL2, cmL1]) await m.wrap('book', loader, TTL)
  if ((await oursL2.getOrLoad('book', loader)) === value) throw new Error('ours L2 answered from memory')

  // ------------------------------------------------------------------ A. L2 hit
  console.log(`A. L2 hit: ${ROUNDS} rounds x ${REDIS_ITERATIONS} calls, interleaved`)
  const a = await section('A', () =>
    rounds(
      {
        'raw ioredis get + JSON.parse': async () => JSON.parse(await raw.get('raw:book')),
        'raw ioredis mget (2 keys) + JSON.parse': async () =>
          JSON.parse((await raw.mget('raw:book', 'raw:gen'))[0]),
        'the same mget through a core breaker': () =>
          breaker.execute(async () => JSON.parse((await raw.mget('raw:book', 'raw:gen'))[0])),
        '@resilient/cache getOrLoad (L2 only)': () => oursL2.getOrLoad('book', loader),
        ...(baseL2 ? { 'baseline build getOrLoad (L2 only)': () => baseL2.getOrLoad('book', loader) } : {}),
        'bentocache getOrSet (L2 only)': () => bentoL2.getOrSet({ key: 'book', factory: loader, ttl: TTL }),
        'cache-manager wrap (@keyv/redis only)': () => cmL2.wrap('book', loader, TTL),
      },
      { rounds: ROUNDS, iterations: REDIS_ITERATIONS },
    ),
  )
  const aBase = a['raw ioredis get + JSON.parse'].median
  if (SECTIONS.includes('A') && oursL2.stats().hitsL2 < ROUNDS * REDIS_ITERATIONS) {
    throw new Error('ours L2 did not hit L2')
  }

  // ------------------------------------------------------------------ B. L1 hit
  console.log(`B. L1 hit: ${ROUNDS} rounds x ${MEMORY_ITERATIONS} calls, interleaved`)
  const b = await section('B', () =>
    rounds(
      {
        'lru-cache get (bare)': () => lru.get('book'),
        '@resilient/cache getOrLoad (L1 hit)': () => oursL1.getOrLoad('book', loader),
        ...(baseL1 ? { 'baseline build getOrLoad (L1 hit)': () => baseL1.getOrLoad('book', loader) } : {}),
        'bentocache getOrSet (L1 hit)': () => bentoL1.getOrSet({ key: 'book', factory: loader, ttl: TTL }),
        'cache-manager wrap (memory store hit)': () => cmL1.wrap('book', loader, TTL),
      },
      { rounds: ROUNDS, iterations: MEMORY_ITERATIONS },
    ),
  )
  const bBase = b['lru-cache get (bare)'].median

  // ------------------------------------------------------------------ C. miss + load
  console.log(`C. miss + load + write-back: ${ROUNDS} rounds x ${REDIS_ITERATIONS} calls, interleaved`)
  let n = 0
  const c = await section('C', () =>
    rounds(
      {
        'raw ioredis get + set': async () => {
          const k = `raw:miss:${n++}`
          const hit = await raw.get(k)
          if (hit === null) await raw.set(k, JSON.stringify(await loader()), 'PX', TTL)
        },
        '@resilient/cache getOrLoad + flush': async () => {
          await oursL1.getOrLoad(`miss:${n++}`, loader)
          await oursL1.flush()
        },
        ...(baseL1
          ? {
              'baseline build getOrLoad + flush': async () => {
                await baseL1.getOrLoad(`miss:${n++}`, loader)
                await baseL1.flush()
              },
            }
          : {}),
        'bentocache getOrSet': () => bentoL1.getOrSet({ key: `miss:${n++}`, factory: loader, ttl: TTL }),
        'cache-manager wrap': () => cmL1.wrap(`miss:${n++}`, loader, TTL),
      },
      { rounds: ROUNDS, iterations: Math.max(100, Math.floor(REDIS_ITERATIONS / 4)) },
    ),
  )
  const cBase = c['raw ioredis get + set'].median

  // ------------------------------------------------------------------ D. breaker open
  console.log(`D. breaker open (Redis SIGSTOPped): ${OPEN_CALLS} calls each, interleaved call by call`)
  const open = createCache({
    redis: { host, port },
    namespace: 'open',
    ttlMs: TTL,
    l1: { maxItems: 1_000 },
    breaker: { resetTimeoutMs: 600_000, volumeThreshold: 5 },
  })
  closers.push(() => open.close())
  while (open.stats().redisStatus !== 'ready') await new Promise((r) => setTimeout(r, 10))
  let bare = skipped
  let ours = skipped
  let commandsWhileOpen
  if (SECTIONS.includes('D')) await lab.pauseRedis()
  if (SECTIONS.includes('D'))
    try {
      let i = 0
      while (open.stats().breaker !== 'open') await open.getOrLoad(`trip:${i++}`, loader)
      const before = open.stats().redisCommands
      const bareNs = []
      const oursNs = []
      for (let j = 0; j < OPEN_CALLS + 1_000; j++) {
        const t0 = process.hrtime.bigint()
        await loader()
        const t1 = process.hrtime.bigint()
        await open.getOrLoad(`open:${j}`, loader) // a miss every time: L1 lookup, skip Redis, load, store L1
        const t2 = process.hrtime.bigint()
        if (j >= 1_000) {
          bareNs.push(Number(t1 - t0))
          oursNs.push(Number(t2 - t1))
        }
      }
      commandsWhileOpen = open.stats().redisCommands - before
      bare = summarize(bareNs)
      ours = summarize(oursNs)
    } finally {
      await lab.resumeRedis()
    }
  const addedP50 = ours.median - bare.median
  const addedP99 = percentile(ours.samples, 99) - percentile(bare.samples, 99)

  // ------------------------------------------------------------------ E. stubbed Redis
  console.log(`E. L2 hit with Redis stubbed in process: ${ROUNDS} rounds x ${MEMORY_ITERATIONS} calls`)
  const stored = `${Date.now() + 3_600_000}:${Date.now() + 3_600_000}:\n${JSON.stringify(value)}`
  const payloadAt = stored.indexOf('\n') + 1
  const stub = new Redis({
    lazyConnect: true,
    enableOfflineQueue: false,
    commandTimeout: 100,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
  })
  Object.defineProperty(stub, 'status', { value: 'ready' })
  // Every command is answered at once, as if the reply had just been read off the socket:
  // ioredis's own client-side work (building the Command, its promise, the reply
  // conversion) stays in both cases; only the socket and Redis are gone.
  stub.sendCommand = (command) => {
    command.resolve([stored, null])
    return command.promise
  }
  const stubbed = createCache({ redis: stub, namespace: 'stub', l1: false })
  const baseStubbed = createBaseline?.({ redis: stub, namespace: 'stub', l1: false })
  if (baseStubbed) closers.push(() => baseStubbed.close())
  closers.push(() => stubbed.close())
  const e = await section('E', () =>
    rounds(
      {
        'stub mget + JSON.parse': async () => JSON.parse((await stub.mget('a', 'b'))[0].slice(payloadAt)),
        '@resilient/cache getOrLoad (L2 hit, stub)': () => stubbed.getOrLoad('book', loader),
        ...(baseStubbed
          ? { 'baseline build getOrLoad (L2 hit, stub)': () => baseStubbed.getOrLoad('book', loader) }
          : {}),
      },
      { rounds: ROUNDS, iterations: MEMORY_ITERATIONS },
    ),
  )
  const eBase = e['stub mget + JSON.parse'].median

  // ------------------------------------------------------------------ F. CPU -> wall
  const spin = (ns) => {
    const until = process.hrtime.bigint() + BigInt(ns)
    while (process.hrtime.bigint() < until);
  }
  const mgetParse = async () => JSON.parse((await raw.mget('raw:book', 'raw:gen'))[0])
  const f = SECTIONS.includes('F')
    ? await rounds(
        Object.fromEntries(
          [0, 1, 2, 4].map((us) => [
            us === 0 ? 'raw mget + JSON.parse' : `... + ${us} µs of busy-wait per call`,
            us === 0
              ? mgetParse
              : async () => {
                  const v = await mgetParse()
                  spin(us * 1000)
                  return v
                },
          ]),
        ),
        { rounds: ROUNDS, iterations: REDIS_ITERATIONS },
      )
    : undefined

  // ------------------------------------------------------------------ report
  const seconds = (performance.now() - started) / 1000
  const table = (r, base, baseLabel) =>
    markdownTable(
      ['case', 'median per call', 'p99 over rounds', `vs ${baseLabel}`],
      Object.entries(r).map(([k, s]) => [k, fmtNs(s.median), fmtNs(s.p99), ratio(s.median, base)]),
    )
  console.log(`\nNode ${process.version}, Redis on loopback, ${seconds.toFixed(1)} s in all.\n`)
  console.log('A. L2 hit\n')
  console.log(table(a, aBase, 'raw'))
  console.log('\nB. L1 hit\n')
  console.log(table(b, bBase, 'lru-cache'))
  console.log('\nC. miss + load + write-back\n')
  console.log(table(c, cBase, 'raw'))
  console.log("\nE. L2 hit, Redis stubbed in process (the cache's own cost)\n")
  console.log(
    markdownTable(
      ['case', 'median per call', 'p99 over rounds', 'added'],
      Object.entries(e).map(([k, v]) => [k, fmtNs(v.median), fmtNs(v.p99), fmtNs(v.median - eBase)]),
    ),
  )
  console.log('\nD. breaker open, a miss every call (per-call times)\n')
  console.log(
    markdownTable(
      ['', 'p50', 'p99'],
      [
        ['loader alone', fmtNs(bare.median), fmtNs(percentile(bare.samples, 99))],
        ['getOrLoad, breaker open', fmtNs(ours.median), fmtNs(percentile(ours.samples, 99))],
        ['added by the cache', fmtNs(addedP50), fmtNs(addedP99)],
      ],
    ),
  )
  console.log(`Redis commands sent while open: ${commandsWhileOpen}`)
  if (f) {
    const fBase = f['raw mget + JSON.parse'].median
    console.log('\nF. client CPU per call -> wall time per call (raw mget)\n')
    console.log(
      markdownTable(
        ['case', 'median per call', 'added wall time', 'vs raw'],
        Object.entries(f).map(([k, v]) => [
          k,
          fmtNs(v.median),
          fmtNs(v.median - fBase),
          ratio(v.median, fBase),
        ]),
      ),
    )
  }
  const pick = (r, base) =>
    Object.fromEntries(
      Object.entries(r).map(([k, s]) => [k, { medianNs: s.median, p99Ns: s.p99, ratio: s.median / base }]),
    )
  const file = writeJson('cache', {
    rounds: ROUNDS,
    redisIterations: REDIS_ITERATIONS,
    memoryIterations: MEMORY_ITERATIONS,
    seconds,
    l2Hit: pick(a, aBase),
    l1Hit: pick(b, bBase),
    missLoad: pick(c, cBase),
    l2HitStubbed: pick(e, eBase),
    cpuToWall: f ? pick(f, f['raw mget + JSON.parse'].median) : undefined,
    breakerOpen: {
      calls: OPEN_CALLS,
      loaderP50Ns: bare.median,
      loaderP99Ns: percentile(bare.samples, 99),
      cacheP50Ns: ours.median,
      cacheP99Ns: percentile(ours.samples, 99),
      addedP50Ns: addedP50,
      addedP99Ns: addedP99,
      redisCommandsWhileOpen: commandsWhileOpen,
    },
  })
  console.log(`\nwrote ${file}`)
} finally {
  for (const close of closers.reverse())
    await Promise.resolve()
      .then(close)
      .catch(() => {})
  await lab.down()
}
