import { type Lab, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPatroniDiscovery } from '../src/discovery/patroni.js'
import type { Discovery, DiscoveryErrorEvent, DiscoveryResult } from '../src/discovery/types.js'

// A real 3-node Patroni 3.0.2 cluster; the leader (whose REST API is our first endpoint) is
// killed with kill -9: discovery moves to the other endpoints at once, does not go back to
// the dead one while they answer, and reports the new leader once Patroni elects it
// (about 10 s with the lab's ttl 10).
let lab: Lab
let d: Discovery | undefined
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled)
  lab = await startLab({ nodes: 3, redis: false })
  await lab.waitForReplicas(2)
})

afterAll(async () => {
  await d?.close()
  await lab?.down()
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

describe('Patroni discovery through a leader crash', () => {
  it('skips the dead endpoint and finds the new leader', async () => {
    const leader = (await lab.primary())!
    const endpoints = [
      leader.apiUrl,
      ...lab.members.filter((m) => m.name !== leader.name).map((m) => m.apiUrl),
    ]
    d = createPatroniDiscovery({ endpoints, timeoutMs: 1_000 })
    const events: DiscoveryErrorEvent[] = []
    d.onError((e) => events.push(e))

    const before = await d.discover()
    expect(before.source).toBe(`${leader.apiUrl}/cluster`)
    expect(before.members.find((m) => m.role === 'primary')?.name).toBe(leader.name)
    expect(before.members.filter((m) => m.role === 'replica')).toHaveLength(2)
    for (const m of before.members.filter((x) => x.role === 'replica')) expect(m.lagBytes).not.toBeNull()

    await lab.killPrimary()
    let after: DiscoveryResult | undefined
    let polls = 0
    const until = Date.now() + 60_000
    while (Date.now() < until) {
      const r = await d.discover()
      polls++
      const p = r.members.find((m) => m.role === 'primary')
      if (p && p.name !== leader.name) {
        after = r
        break
      }
      await new Promise((res) => setTimeout(res, 200))
    }
    expect(after).toBeDefined()
    expect(after!.source).not.toBe(`${leader.apiUrl}/cluster`)
    expect(polls).toBeGreaterThan(1)
    // One failure of the dead endpoint, then it was never tried again: the others answered.
    expect(events.map((e) => e.source)).toEqual([`${leader.apiUrl}/cluster`])
    expect(events[0]!.error.message).toMatch(/ECONNREFUSED|socket|closed/i)
  })
})
