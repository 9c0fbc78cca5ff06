import { execFile, execFileSync } from 'node:child_process'
import { appendFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { type Cache, type CacheOptions, createCache, type InvalidationEvent } from '@resilient/cache'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { blockFor, deferred, pastTimer, sleep, until } from './helpers.js'
import type { Topology } from './topology.js'

const root = fileURLToPath(new URL('../../../../', import.meta.url))
const worker = fileURLToPath(new URL('../fixtures/lease-worker.mjs', import.meta.url))

/**
 * How long the tag race runs: short in CI (it still catches the race on the old code), 60 s on
 * demand: `CACHE_TAG_RACE_MS=60000 CACHE_TAG_RACE_REPORT=/tmp/tag-race.txt npx vitest run
 * --project integration packages/cache -t 'tag race'`.
 */
const TAG_RACE_MS = Number(process.env.CACHE_TAG_RACE_MS ?? 4_000)

/**
 * The cache's integration contract: every test here runs against each topology (a single
 * Redis, Sentinel, Cluster) from the lab, so that each one means the same thing on all of
 * them. Tests that only make sense on one topology live in its own file.
 */
export function cacheContract(
  start: () => Promise<Topology>,
  can: { killAndRestart: boolean },
): { topology: () => Topology } {
  let topo: Topology
  const caches: Cache[] = []
  let seq = 0

  beforeAll(async () => {
    topo = await start()
  })
  afterAll(async () => {
    await topo?.close()
  })
  afterEach(async () => {
    await Promise.all(caches.splice(0).map((c) => c.close()))
  })

  /** A namespace of its own for each test: nothing leaks from one test into the next. */
  function ns(name: string): string {
    return `${name}-${++seq}`
  }

  function make(options: Partial<CacheOptions> = {}): Cache {
    const cache = createCache({ redis: topo.redis(), ...options })
    caches.push(cache)
    return cache
  }

  /** Connected, and (with an L1) subscribed: the first subscription resyncs L1, so fill after it. */
  async function ready(...cs: Cache[]): Promise<void> {
    await until(
      () =>
        cs.every((c) => {
          const s = c.stats()
          // (`pubsub` is undefined on versions before it was reported)
          return (
            s.redisStatus === 'ready' &&
            (s.pubsub === undefined || s.pubsub === 'subscribed' || s.pubsub === 'none')
          )
        }),
      10_000,
      'redis ready',
    )
    await sleep(50)
  }

  function exists(key: string): Promise<unknown> {
    return topo.raw.call('EXISTS', key)
  }

  describe('two instances sharing Redis', () => {
    it('L2: a value loaded by one instance is a hit for the other, no loader call', async () => {
      const n = ns('share')
      const a = make({ namespace: n })
      const b = make({ namespace: n })
      await ready(a, b)
      expect(await a.getOrLoad('book:1', async () => ({ title: 'Dune' }))).toEqual({ title: 'Dune' })
      await a.flush()
      let called = false
      const got = await b.getOrLoad('book:1', async () => {
        called = true
        return { title: 'wrong' }
      })
      expect(got).toEqual({ title: 'Dune' })
      expect(called).toBe(false)
      expect(b.stats()).toMatchObject({ hitsL2: 1, loads: 0 })
    })

    it('race rule: a load that raced with the other instance’s delete is stored nowhere', async () => {
      const n = ns('race')
      const a = make({ namespace: n })
      const b = make({ namespace: n })
      await ready(a, b)
      const gate = deferred<string>()
      const loading = a.getOrLoad('book:2', () => gate.promise) // a reads the row: old value
      await until(() => a.stats().loads === 1, 2_000, 'loader started')
      await b.delete('book:2') // the row was updated, then b invalidates
      gate.resolve('old title') // a's read finishes after the delete
      expect(await loading).toBe('old title') // the caller gets what it read...
      await a.flush()
      expect(a.stats().fillsDiscarded).toBe(1) // ...but it is not stored
      expect(await exists(`${n}:{book:2}:v`)).toBe(0)
      expect(await a.get('book:2')).toBeUndefined()
      expect(await b.get('book:2')).toBeUndefined()
      expect(await b.getOrLoad('book:2', async () => 'new title')).toBe('new title')
    })

    it('race rule with tags: deleteByTag on one instance beats an in-flight tagged load on the other', async () => {
      const n = ns('race-tag')
      const a = make({ namespace: n })
      const b = make({ namespace: n })
      await ready(a, b)
      await a.set('author:9', 'x', { tags: ['author'] })
      const gate = deferred<string>()
      const loading = a.getOrLoad('book:3', () => gate.promise, { tags: ['author', 'book'] })
      await until(() => a.stats().loads === 1, 2_000, 'loader started')
      expect(await b.deleteByTag('author')).toBe(2) // author:9 and the in-flight book:3
      gate.resolve('stale')
      expect(await loading).toBe('stale')
      await a.flush()
      expect(await a.get('book:3')).toBeUndefined()
      expect(await b.get('book:3')).toBeUndefined()
      // a's L1 hears of it over pub/sub, a moment later (on a Cluster, across the cluster bus)
      await until(async () => (await a.get('author:9')) === undefined, 2_000, 'a heard of the deleteByTag')
      expect(await exists(`${n}:{book:3}:v`)).toBe(0)
    })

    it('pub/sub: a delete on one instance drops the key from the other’s L1', async () => {
      const n = ns('pubsub')
      const a = make({ namespace: n })
      const b = make({ namespace: n })
      await ready(a, b)
      const seen: InvalidationEvent[] = []
      b.onInvalidation((e) => seen.push(e))
      await a.getOrLoad('k', async () => 'v1')
      await a.flush()
      expect(await b.getOrLoad('k', async () => 'unused')).toBe('v1') // now in b's L1
      expect(await b.get('k')).toBe('v1')
      const l1Hits = b.stats().hitsL1
      await a.delete('k')
      await until(
        () => seen.some((e) => e.source === 'remote' && e.keys.includes('k')),
        2_000,
        'invalidation',
      )
      expect(await b.get('k')).toBeUndefined()
      expect(b.stats().hitsL1).toBe(l1Hits) // the miss did not come from L1
      // set() on one instance replaces the other's L1 copy too
      await b.getOrLoad('k', async () => 'v2')
      await a.set('k', 'v3')
      await until(async () => (await b.get('k')) === 'v3', 2_000, 'set propagated')
      // an instance without an L1 of its own still tells the others
      const noL1 = make({ namespace: n, l1: false })
      await ready(noL1)
      const received = b.stats().invalidationsReceived
      await noL1.delete('k')
      await until(
        () => b.stats().invalidationsReceived > received,
        2_000,
        'invalidation from an L1-less instance',
      )
      expect(await b.get('k')).toBeUndefined()
    })

    it('stampede: 1,000 concurrent misses on one key call the loader exactly once', async () => {
      const a = make({ namespace: ns('stampede') })
      await ready(a)
      let calls = 0
      const values = await Promise.all(
        Array.from({ length: 1000 }, () =>
          a.getOrLoad('hot', async () => {
            calls++
            await sleep(50)
            return 'v'
          }),
        ),
      )
      expect(calls).toBe(1)
      expect(values.every((v) => v === 'v')).toBe(true)
      // one lookup, one new generation, one fill
      expect(a.stats().redisCommands).toBeLessThanOrEqual(3)
    })

    it('a caller that joins a load which then loses its race to another instance’s delete loads again', async () => {
      const n = ns('join')
      const a = make({ namespace: n, l1: false })
      const b = make({ namespace: n, l1: false })
      await ready(a, b)
      const gate = deferred<string>()
      const first = a.getOrLoad('k', () => gate.promise) // reads the row before the write
      await until(() => a.stats().loads === 1, 2_000, 'loader started')
      await b.delete('k') // the write, then its invalidation: done before the next read begins
      const second = a.getOrLoad('k', async () => 'new') // may find the first load still in flight
      gate.resolve('old')
      expect(await first).toBe('old') // began before the delete
      expect(await second).toBe('new') // began after it
    })

    it('keys with { and } work, on a Cluster too (defect 7: a key starting with } broke the hash tag)', async () => {
      const n = ns('braces')
      const a = make({ namespace: n })
      const b = make({ namespace: n, l1: false })
      await ready(a, b)
      const keys = ['}x', '}', 'a}b', '{x}', 'x{', '{}', '}{', 'plain']
      for (const key of keys) {
        await a.set(key, `v:${key}`, { tags: ['braces'] })
        expect(await b.get(key)).toBe(`v:${key}`)
        expect(await b.getOrLoad(key, async () => 'loaded')).toBe(`v:${key}`)
      }
      await a.delete('}x')
      expect(await b.get('}x')).toBeUndefined()
      expect(await b.deleteByTag('braces')).toBe(keys.length)
      // a's L1 hears of it over pub/sub, a moment later (on a Cluster, across the cluster bus)
      await until(
        async () => (await Promise.all(keys.map((k) => a.get(k)))).every((v) => v === undefined),
        2_000,
        'a heard',
      )
      for (const key of keys) expect(await b.getOrLoad(key, async () => `new:${key}`)).toBe(`new:${key}`)
      await b.flush()
      for (const key of keys) expect(await a.get(key)).toBe(`new:${key}`)
      expect(a.stats().redisErrors + b.stats().redisErrors).toBe(0)
      expect(b.stats().breaker).toBe('closed')
    })

    it('one key’s Redis error does not open the breaker for the others (defect 7)', async () => {
      const n = ns('wrongtype')
      const a = make({ namespace: n, l1: false })
      await ready(a)
      await a.set('good', 'fine')
      // Something else wrote lists where these keys' generations live: every fill of them fails
      // (WRONGTYPE), one after the other.
      const bad = ['bad0', 'bad1', 'bad2', 'bad3', 'bad4', 'bad5']
      for (const key of bad) await topo.raw.call('RPUSH', `${n}:{${key}}:g`, 'not a generation')
      const values = await Promise.all(bad.map((key) => a.getOrLoad(key, async () => `v:${key}`)))
      expect(values).toEqual(bad.map((key) => `v:${key}`))
      await a.flush()
      expect(a.stats().redisErrors).toBeGreaterThanOrEqual(bad.length)
      expect(a.stats().breaker).toBe('closed')
      expect(await a.get('good')).toBe('fine')
      expect(a.stats().hitsL2).toBe(1)
    })

    it('garbage on the invalidation channel is counted and ignored; real invalidations still work (defect 8)', async () => {
      const n = ns('garbage')
      const a = make({ namespace: n })
      const b = make({ namespace: n })
      await ready(a, b)
      await a.getOrLoad('k', async () => 'v')
      await a.flush()
      expect(await b.getOrLoad('k', async () => 'unused')).toBe('v')
      const garbage = [
        'null',
        '1',
        '"x"',
        '[]',
        '{}',
        'not json',
        '{"k":null}',
        '{"i":"x","k":"k"}',
        '{"i":"x","k":[1,2]}',
        '{"i":null,"k":["k"]}',
        '{"i":"x","k":["k"],"t":5}',
      ]
      for (const m of garbage) await topo.raw.publish(`${n}:__invalidate`, m)
      await until(() => (b.stats().badMessages ?? 0) >= garbage.length, 2_000, 'garbage counted')
      expect(await b.get('k')).toBe('v') // garbage invalidates nothing
      await a.delete('k')
      await until(
        async () => (await b.get('k')) === undefined,
        2_000,
        'a real invalidation after the garbage',
      )
    })

    it('a generation that vanished (eviction) does not let a raced fill in (defect 10)', async () => {
      const n = ns('evicted')
      const a = make({ namespace: n, l1: false })
      const b = make({ namespace: n, l1: false })
      await ready(a, b)
      const gate = deferred<string>()
      const loading = a.getOrLoad('e', () => gate.promise) // the key has no generation yet
      await until(() => a.stats().loads === 1, 2_000, 'loader started')
      await b.delete('e')
      await topo.raw.call('DEL', `${n}:{e}:g`) // evicted under memory pressure
      gate.resolve('old')
      expect(await loading).toBe('old')
      await a.flush()
      expect(await exists(`${n}:{e}:v`)).toBe(0)
      expect(a.stats().fillsDiscarded).toBe(1)
    })

    it('a tagged value loaded slowly is still found by deleteByTag near its expiry (defect 10)', async () => {
      const n = ns('tag-ttl')
      const a = make({ namespace: n, l1: false, ttlMs: 1_000 })
      await ready(a)
      const v = await a.getOrLoad(
        'slow',
        async () => {
          await sleep(2_000) // the tag was registered 2 s before the value was stored
          return 'v'
        },
        { tags: ['slow-tag'] },
      )
      expect(v).toBe('v')
      await a.flush() // the value lives 1 s from now
      expect(await a.deleteByTag('slow-tag')).toBe(1)
      expect(await exists(`${n}:{slow}:v`)).toBe(0)
    })

    it(
      `tag race: 2 writers and 4 readers on hot tagged keys for ${TAG_RACE_MS} ms (defect 1)`,
      async () => {
        // 0 reads of a version older than the last deleteByTag that completed before the read began.
        const n = ns('tag-race')
        // A short hard loader timeout: a key's tag entry is safe to forget ~2.4 s after it was
        // registered, so that even a short run goes through the forgetting (where the race was).
        const o = { namespace: n, loaderTimeoutMs: { hard: 1_000 } }
        const writers = [make(o), make(o)]
        // The readers have no L1 (another instance's L1 hears of a deleteByTag over pub/sub, a
        // moment later: the documented limit), and each reads one key at a time (a caller that
        // joins another's load has its own test): this is about what Redis serves.
        const readers = [0, 1, 2, 3].map(() => make({ ...o, l1: false }))
        await ready(...writers, ...readers)
        const keys = ['h0', 'h1', 'h2', 'h3']
        const db = new Map(keys.map((k) => [k, 0])) // the source of truth: a version per key
        const completed = new Map(keys.map((k) => [k, 0])) // versions whose deleteByTag resolved
        const end = performance.now() + TAG_RACE_MS
        let reads = 0
        let deletes = 0
        let violations = 0
        const examples: string[] = []
        const pick = () => keys[Math.floor(Math.random() * keys.length)]!
        const write = async (w: Cache) => {
          while (performance.now() < end) {
            const k = pick()
            const version = db.get(k)! + 1
            db.set(k, version) // the write
            await w.deleteByTag('hot') // then the invalidation
            deletes++
            if (completed.get(k)! < version) completed.set(k, version)
            await sleep(Math.random() * 3)
          }
        }
        const read = async (r: Cache) => {
          while (performance.now() < end) {
            const k = pick()
            const floor = completed.get(k)!
            const got = await r.getOrLoad(
              k,
              async () => {
                const v = db.get(k)!
                if (Math.random() < 0.5) await sleep(Math.random() * 2)
                return v
              },
              { tags: ['hot'] },
            )
            reads++
            if ((got as number) < floor) {
              violations++
              if (examples.length < 10) examples.push(`${k}: read ${got} < ${floor}`)
            }
          }
        }
        await Promise.all([...writers.map(write), ...readers.map(read)])
        // Defect 1 itself: a value Redis holds under the tag must be in the tag's index, or the
        // next deleteByTag cannot find it.
        const lost: string[] = []
        const index = `${n}:t:{hot}`
        const type = await topo.raw.call('TYPE', index)
        for (const k of keys) {
          if ((await exists(`${n}:{${k}}:v`)) === 0) continue
          const member =
            type === 'zset'
              ? (await topo.raw.call('ZSCORE', index, k)) !== null
              : (await topo.raw.call('SISMEMBER', index, k)) === 1
          if (!member) lost.push(k)
        }
        const report = process.env.CACHE_TAG_RACE_REPORT // a file to append the figures to
        if (report) {
          appendFileSync(
            report,
            `tag race ${topo.name}: ${TAG_RACE_MS} ms, ${reads} reads, ${deletes} deleteByTag, ${violations} violations, ${lost.length} keys lost from the index\n`,
          )
        }
        expect(examples).toEqual([])
        expect(lost).toEqual([])
        expect(reads).toBeGreaterThan(100)
        expect(deletes).toBeGreaterThan(20)
      },
      TAG_RACE_MS + 60_000,
    )
  })

  describe('lease', () => {
    it('a waiter takes the lease over as soon as the holder’s load fails, instead of waiting it out', async () => {
      const lease = { waitMs: 5_000, pollMs: 20 }
      const n = ns('lease-handover')
      const a = make({ namespace: n, lease })
      const b = make({ namespace: n, lease })
      await ready(a, b)
      let failedAt = 0
      const holder = a
        .getOrLoad('k', async () => {
          await sleep(300)
          failedAt = performance.now()
          throw new Error('db down')
        })
        .catch((e: unknown) => e)
      await until(() => a.stats().loads === 1, 2_000, 'holder loading')
      const t0 = performance.now()
      let loadedAt = 0
      const value = await b.getOrLoad('k', async () => {
        loadedAt = performance.now()
        return 'from b'
      })
      expect(value).toBe('from b')
      expect((await holder) as Error).toMatchObject({ code: 'E_LOADER' })
      expect(loadedAt).toBeGreaterThanOrEqual(failedAt) // b did not load while a held the lease
      expect(performance.now() - t0).toBeLessThan(lease.waitMs / 2) // it did not wait the lease out
      expect(b.stats().loads).toBe(1)
    })

    it('a waiter with a stale value serves it at once while another process holds the lease (defect 6)', async () => {
      const lease = { waitMs: 5_000, pollMs: 20 }
      const n = ns('lease-stale')
      const a = make({ namespace: n, lease, l1: false, ttlMs: 200, graceMs: 60_000 })
      const b = make({ namespace: n, lease, l1: false, ttlMs: 200, graceMs: 60_000 })
      await ready(a, b)
      await a.getOrLoad('k', async () => 'old')
      await a.flush()
      await sleep(300) // past its TTL, within grace
      const gate = deferred<string>()
      const holder = a.getOrLoad('k', () => gate.promise) // a takes the lease and loads
      await until(() => a.stats().loads === 2, 2_000, 'holder loading')
      const reasons: string[] = []
      b.onStale((e) => reasons.push(e.reason))
      const t0 = performance.now()
      const value = await b.getOrLoad('k', async () => 'from b')
      const waited = performance.now() - t0
      gate.resolve('new')
      expect(await holder).toBe('new')
      expect(value).toBe('old')
      expect(waited).toBeLessThan(lease.waitMs / 5)
      expect(b.stats().loads).toBe(0)
      expect(reasons).toEqual(['lease-held'])
    })
  })

  describe('lease across processes', () => {
    beforeAll(() => {
      // The workers run the built package.
      execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', 'packages/cache'], {
        cwd: root,
        stdio: 'pipe',
      })
    })

    it('4 processes x 50 concurrent misses: one loader call in all with the lease, more than one without', async () => {
      const n = ns('fleet')
      const goAt = Date.now() + 3_000
      const runs = Array.from(
        { length: 4 },
        () =>
          new Promise<string>((resolve, reject) => {
            execFile(
              process.execPath,
              [worker, JSON.stringify(topo.redis()), n, String(goAt), '50'],
              { timeout: 60_000 },
              (err, stdout, stderr) =>
                err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
            )
          }),
      )
      const outputs = (await Promise.all(runs)).map(
        (o) =>
          JSON.parse(o) as {
            leased: { loads: number; sources: number }
            unleased: { loads: number; sources: number }
          },
      )
      for (const o of outputs) {
        // single-flight within each process
        expect(o.leased.sources).toBe(1)
        expect(o.unleased.sources).toBe(1)
      }
      expect(outputs.reduce((s, o) => s + o.leased.loads, 0)).toBe(1)
      expect(outputs.reduce((s, o) => s + o.unleased.loads, 0)).toBeGreaterThan(1)
    })
  })

  describe('Redis trouble never hangs a caller', () => {
    const redisTimeoutMs = 100
    const resetTimeoutMs = 1_500
    // What Redis may add to a call is one redisTimeoutMs: the acceptance bound is redisTimeoutMs
    // + 20 ms, measured against a bare timer of redisTimeoutMs started with each call (on a loaded
    // 2-core machine a 100 ms timer itself takes longer), + 10 ms for a noisy shared CI box.
    const pastBound = 20 + 10

    it('SIGSTOP: calls settle within the bound, the breaker opens and stops all commands, SIGCONT is used again', async () => {
      const n = ns('stop')
      const cache = make({ namespace: n, redisTimeoutMs, breaker: { volumeThreshold: 5, resetTimeoutMs } })
      await ready(cache)
      for (let i = 0; i < 20; i++) await cache.getOrLoad(`warm${i}`, async () => i) // JIT, scripts loaded
      await cache.flush()

      const past: number[] = []
      const call = async (key: string) => {
        past.push(await pastTimer(redisTimeoutMs, () => cache.getOrLoad(key, async () => key.length)))
      }
      await topo.pause()
      let commandsWhileOpen = -1
      try {
        for (let round = 0; round < 5; round++) {
          await Promise.all(Array.from({ length: 10 }, (_, i) => call(`stop-${round}-${i}`)))
        }
        expect(cache.stats().breaker).toBe('open')
        const before = cache.stats().redisCommands
        for (let i = 0; i < 200; i++) await call(`open-${i}`)
        await cache.get('open-1')
        commandsWhileOpen = cache.stats().redisCommands - before
      } finally {
        await topo.resume()
      }
      const resumedAt = performance.now()
      expect(Math.max(...past)).toBeLessThan(pastBound)
      expect(commandsWhileOpen).toBe(0)
      expect(cache.stats().redisTimeouts).toBeGreaterThanOrEqual(3)

      // After SIGCONT: the connection is back (remade after the timeouts), the breaker lets a
      // trial through after resetTimeoutMs and closes.
      let i = 0
      await until(
        async () => {
          await cache.getOrLoad(`after-${i++}`, async () => i)
          return cache.stats().breaker === 'closed' && cache.stats().redisStatus === 'ready'
        },
        resetTimeoutMs + 3_000,
        'breaker closed after SIGCONT',
      )
      expect(performance.now() - resumedAt).toBeLessThan(resetTimeoutMs + 3_000)
      await cache.set('back', 'yes')
      expect(await exists(`${n}:{back}:v`)).toBe(1)
    })

    it('SIGSTOP after a busy healthy period: three timeouts in a row open the breaker (the window alone would wait)', async () => {
      const cache = make({ namespace: ns('busy'), redisTimeoutMs, l1: false })
      await ready(cache)
      await cache.set('hot', 1)
      for (let i = 0; i < 2_000; i++) await cache.get('hot') // 2,000 successes in the rolling window
      expect(cache.stats().breaker).toBe('closed')
      await topo.pause()
      let calls = 0
      try {
        while (cache.stats().breaker !== 'open' && calls < 20) {
          calls++
          await cache.getOrLoad(`busy-${calls}`, async () => calls)
        }
      } finally {
        await topo.resume()
      }
      // With the percentage alone, 2,000 successes must roll out (or be outnumbered) first:
      // about 2,000 timed-out calls, 100 ms each.
      expect(cache.stats().breaker).toBe('open')
      expect(calls).toBeLessThanOrEqual(3)
    })

    it('a 400 ms blip opens the breaker; a delete while it is still open reaches Redis and every instance misses afterwards (defect 2)', async () => {
      const n = ns('blip')
      const opts = { namespace: n, redisTimeoutMs, breaker: { resetTimeoutMs: 10_000 } }
      const cs = [make(opts), make(opts), make(opts)]
      await ready(...cs)
      await cs[0]!.getOrLoad('k', async () => 'v1')
      await cs[0]!.flush()
      for (const c of cs.slice(1)) expect(await c.getOrLoad('k', async () => 'unused')).toBe('v1') // in every L1
      const seen = cs.map(() => false)
      for (const [i, c] of cs.entries()) {
        c.onInvalidation((e) => {
          if (e.source !== 'local' && (e.source === 'resync' || e.keys.includes('k'))) seen[i] = true
        })
      }
      const pausedAt = performance.now()
      await topo.pause()
      try {
        // three timeouts in a row on every instance: every breaker opens
        await Promise.all(
          cs.flatMap((c, i) => [0, 1, 2].map((j) => c.getOrLoad(`blip-${i}-${j}`, async () => j))),
        )
        await sleep(Math.max(0, 400 - (performance.now() - pausedAt)))
      } finally {
        await topo.resume()
      }
      for (const c of cs) expect(c.stats().breaker).toBe('open')
      await cs[0]!.delete('k') // the breaker is open: still attempted, and Redis answers
      expect(cs[0]!.stats().breaker).toBe('open')
      expect(await exists(`${n}:{k}:v`)).toBe(0)
      await until(() => seen[1]! && seen[2]!, 5_000, 'the other instances heard of it')
      for (const [i, c] of cs.entries()) {
        expect(await c.getOrLoad('k', async () => `reloaded-${i}`)).toBe(`reloaded-${i}`)
      }
    })

    it('an event-loop stall is not a Redis timeout: 250 ms blocked with commands in flight (defect 3)', async () => {
      const cache = make({ namespace: ns('stall'), redisTimeoutMs, l1: false })
      await ready(cache)
      await cache.set('hot', 'v')
      for (let i = 0; i < 20; i++) await cache.get('hot') // warm
      const calls = Array.from({ length: 20 }, () => cache.getOrLoad('hot', async () => 'loaded'))
      blockFor(250) // Redis answers meanwhile; the replies wait in the socket buffer
      const values = await Promise.all(calls)
      expect(values.every((v) => v === 'v')).toBe(true)
      expect(cache.stats()).toMatchObject({ redisTimeouts: 0, breaker: 'closed', loads: 0 })
    })

    if (can.killAndRestart) {
      it('kill -9 and restart: no waiting and no commands while down, used again after restart, L1 resynced', async () => {
        const kr = topo.killAndRestart!
        const n = ns('kill')
        const cache = make({ namespace: n, redisTimeoutMs, breaker: { volumeThreshold: 5, resetTimeoutMs } })
        await ready(cache)
        const resyncs: InvalidationEvent[] = []
        cache.onInvalidation((e) => {
          if (e.source === 'resync') resyncs.push(e)
        })
        await cache.getOrLoad('kept', async () => 'in L1')
        await cache.flush()
        await kr.kill()
        await until(() => cache.stats().redisStatus !== 'ready', 2_000, 'client saw the close')
        const before = cache.stats().redisCommands
        const past: number[] = []
        for (let i = 0; i < 100; i++) {
          past.push(await pastTimer(redisTimeoutMs, () => cache.getOrLoad(`down-${i}`, async () => i)))
        }
        expect(await cache.getOrLoad('kept', async () => 'reloaded')).toBe('in L1')
        expect(cache.stats().redisCommands).toBe(before)
        expect(Math.max(...past)).toBeLessThan(pastBound)
        await expect(cache.delete('x')).rejects.toMatchObject({ code: 'E_CACHE_UNAVAILABLE' })

        await kr.restart()
        const restartedAt = performance.now()
        await until(
          async () => {
            try {
              await cache.set('after-restart', 1)
              return true
            } catch {
              return false
            }
          },
          resetTimeoutMs + 2_000,
          'redis used again after restart',
        )
        expect(performance.now() - restartedAt).toBeLessThan(resetTimeoutMs + 2_000)
        expect(await exists(`${n}:{after-restart}:v`)).toBe(1)
        // the subscriber missed messages while Redis was down: L1 was cleared on resubscribe
        await until(() => resyncs.length > 0, 3_000, 'L1 resync')
        expect(await cache.getOrLoad('kept', async () => 'reloaded')).toBe('reloaded')
      })
    }

    it('check() is pass with a latency when Redis answers, warn when it is paused', async () => {
      const cache = make({ namespace: ns('check'), redisTimeoutMs })
      await ready(cache)
      const { check } = cache
      const ok = await check()
      expect(ok.status).toBe('pass')
      expect(ok.observedUnit).toBe('ms')
      expect(ok.observedValue).toBeGreaterThan(0)
      await topo.pause()
      try {
        let status = ''
        const past = await pastTimer(redisTimeoutMs, async () => {
          status = (await check()).status
        })
        expect(status).toBe('warn')
        expect(past).toBeLessThan(pastBound)
      } finally {
        await topo.resume()
      }
    })
  })

  return { topology: () => topo }
}
