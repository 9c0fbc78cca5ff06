import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { createHealth } from '@resilient/health'
import { type Lab, startLab } from '@resilient/lab'
import autocannon from 'autocannon'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

/**
 * Probes under load never reach the dependencies more than once per interval: autocannon
 * hammers readiness for 3 s while each check counts its calls, and the real Redis of the lab
 * counts the PINGs it received. (Throughput against a bare handler is measured side by side
 * in bench/health/probe.bench.mjs, not asserted here.)
 */
let lab: Lab | undefined
beforeAll(async () => {
  lab = await startLab({ nodes: 0 })
})
afterAll(async () => {
  await lab?.down()
})

async function pingsServed(): Promise<number> {
  const info = String(await lab!.redisCommand(['INFO', 'commandstats']))
  return Number(/cmdstat_ping:calls=(\d+)/.exec(info)?.[1] ?? 0)
}

describe('readiness under a probe load test', () => {
  it('each dependency check runs at most once per interval', async () => {
    const calls = { postgres: 0, redis: 0 }
    const health = createHealth({
      intervalMs: 500,
      checks: {
        postgres: {
          check: async () => {
            calls.postgres++
            await new Promise((r) => setTimeout(r, 20)) // a slow dependency
            return { status: 'pass' as const }
          },
        },
        redis: {
          critical: false,
          intervalMs: 250,
          check: async () => {
            calls.redis++
            return (await lab!.redisCommand(['PING'])) === 'PONG'
          },
        },
      },
    })
    await health.refresh()
    const server = http.createServer(health.readiness)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ready`
    const before = { ...calls }
    const pingsBefore = await pingsServed()
    const t0 = performance.now()
    const result = await autocannon({ url, connections: 32, duration: 3 })
    const elapsed = performance.now() - t0
    await new Promise((r) => server.close(r))
    await health.shutdown({ drainDelayMs: 0 })
    const pings = (await pingsServed()) - pingsBefore

    const ran = { postgres: calls.postgres - before.postgres, redis: calls.redis - before.redis }
    console.log(
      `probe load: ${result.requests.total} probes in ${Math.round(elapsed)} ms, checks ran ${JSON.stringify(ran)}, Redis served ${pings} PINGs`,
    )
    expect(result.errors).toBe(0)
    expect(result.non2xx).toBe(0)
    expect(result.requests.total).toBeGreaterThan(1_000)
    // Start to start >= interval: at most floor(elapsed / interval) + 1 runs.
    expect(ran.postgres).toBeLessThanOrEqual(Math.floor(elapsed / 500) + 1)
    expect(ran.redis).toBeLessThanOrEqual(Math.floor(elapsed / 250) + 1)
    // And they did keep running during the load.
    expect(ran.postgres).toBeGreaterThanOrEqual(3)
    expect(ran.redis).toBeGreaterThanOrEqual(6)
    expect(health.checkCalls()).toEqual(calls)
    // The dependency itself saw one PING per run, no more.
    expect(pings).toBe(ran.redis)
    expect(health.report().checks['redis:responseTime']?.[0]?.status).toBe('pass')
  })
})
