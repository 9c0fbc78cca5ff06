import { type Cache, createCache } from '@resilient/cache'
import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// Redis with a replica and 3 sentinels (down-after 1 s): about 10 s on 2 cores.

let lab: Lab
let cache: Cache | undefined

beforeAll(async () => {
  lab = await startLab({ nodes: 0, sentinel: true })
})
afterAll(async () => {
  await cache?.close()
  await lab?.down()
})

async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = performance.now() + timeoutMs
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe('Sentinel', () => {
  it('keeps serving through the loss of the Redis master and uses the promoted replica after failover', async () => {
    const sentinel = lab.sentinel!
    const redisTimeoutMs = 100
    const c = createCache({
      redis: { sentinels: sentinel.sentinels, name: sentinel.name },
      namespace: 'sent',
      redisTimeoutMs,
      breaker: { volumeThreshold: 5, resetTimeoutMs: 1_000 },
    })
    cache = c
    await until(async () => c.stats().redisStatus === 'ready', 5_000, 'connected through the sentinels')
    expect(await c.getOrLoad('kept', async () => 'from the db')).toBe('from the db')
    await c.flush()
    const oldMaster = await lab.killRedisPrimary()

    // While the sentinels fail over: L1 hits, and loads for misses, each within the bound.
    const durations: number[] = []
    let failedOver = false
    const failover = lab.waitForRedisFailover({ not: oldMaster.port, timeoutMs: 30_000 }).finally(() => {
      failedOver = true
    })
    let i = 0
    while (!failedOver) {
      const t0 = performance.now()
      expect(await c.getOrLoad('kept', async () => 'reloaded')).toBe('from the db')
      expect(await c.getOrLoad(`during-${i}`, async () => i)).toBe(i)
      durations.push(performance.now() - t0)
      i++
      await new Promise((r) => setTimeout(r, 20))
    }
    const newMaster = await failover
    expect(newMaster.port).not.toBe(oldMaster.port)
    expect(i).toBeGreaterThan(5)
    // two calls per sample; each adds at most one Redis timeout
    expect(Math.max(...durations)).toBeLessThan(2 * (redisTimeoutMs + 30))

    // The client follows the sentinels to the promoted replica: writes land there.
    await until(
      async () => {
        try {
          await c.set('after-failover', 'yes')
          return true
        } catch {
          return false
        }
      },
      20_000,
      'a write through the cache after failover',
    )
    expect(await lab.redisCommand(['EXISTS', 'sent:{after-failover}:v'], newMaster.port)).toBe(1)
    expect((await c.check()).status).toBe('pass')
  })
})
