import { ResilientError } from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { WriterGate } from '../src/failover.js'
import type { MemberPool } from '../src/member-pool.js'
import { eligibleReplicas, type Member, pickReplica } from '../src/topology.js'

function member(name: string, over: Partial<Member> = {}, load = 0): Member {
  return {
    name,
    host: '127.0.0.1',
    port: 5432,
    role: 'replica',
    state: 'running',
    timeline: 1,
    sync: false,
    reportedLagBytes: 0,
    lsn: null,
    lsnTimeline: 1,
    lsnEpoch: 0,
    measuredLagBytes: null,
    downUntil: 0,
    writes: 0,
    noLoadBalance: false,
    offTimeline: false,
    pool: { load } as unknown as MemberPool,
    unobserve: () => {},
    ...over,
  }
}

describe('replica choice', () => {
  const rules = { maxLagBytes: 1_000, now: 1_000 }

  it('only running/streaming replicas within the lag limit, not marked down', () => {
    const ms = [
      member('ok'),
      member('streaming', { state: 'streaming' }),
      member('primary', { role: 'primary' }),
      member('starting', { state: 'starting' }),
      member('lagging', { reportedLagBytes: 5_000 }),
      member('measured-lagging', { reportedLagBytes: 0, measuredLagBytes: 2_000 }),
      member('measured-ok', { reportedLagBytes: 9_999, measuredLagBytes: 10 }),
      member('unknown-lag', { reportedLagBytes: null }),
      member('down', { downUntil: 2_000 }),
      member('was-down', { downUntil: 999 }),
      member('unknown-role', { role: 'unknown' }),
    ]
    expect(eligibleReplicas(ms, rules).map((m) => m.name)).toEqual([
      'ok',
      'streaming',
      'measured-ok',
      'was-down',
    ])
    expect(eligibleReplicas(ms, { ...rules, exclude: new Set(['ok']) }).map((m) => m.name)).toEqual([
      'streaming',
      'measured-ok',
      'was-down',
    ])
  })

  it('no reads for a replica off the primary timeline or tagged noloadbalance', () => {
    const ms = [member('ok'), member('off', { offTimeline: true }), member('nolb', { noLoadBalance: true })]
    expect(eligibleReplicas(ms, rules).map((m) => m.name)).toEqual(['ok'])
  })

  it('read-your-writes: only replicas that replayed the session position', () => {
    const ms = [
      member('behind', { lsn: 99n }),
      member('there', { lsn: 100n }),
      member('unknown', { lsn: null }),
    ]
    expect(eligibleReplicas(ms, { ...rules, minLsn: 100n, minTimeline: 1 }).map((m) => m.name)).toEqual([
      'there',
    ])
    expect(eligibleReplicas(ms, { ...rules, minLsn: null }).length).toBe(3)
  })

  it('read-your-writes across timelines: a position only counts on its own timeline', () => {
    // After a failover the old primary rejoins on the old timeline, "ahead" by LSN without the write.
    const ms = [
      member('old-primary', { lsn: 900n, lsnTimeline: 1 }),
      member('follower', { lsn: 100n, lsnTimeline: 2 }),
      member('unknown-tl', { lsn: 900n, lsnTimeline: null }),
    ]
    expect(eligibleReplicas(ms, { ...rules, minLsn: 100n, minTimeline: 2 }).map((m) => m.name)).toEqual([
      'follower',
    ])
    expect(eligibleReplicas(ms, { ...rules, minLsn: 500n, minTimeline: 2 })).toEqual([])
    // a position whose timeline is unknown (a version 1 token): no replica qualifies
    expect(eligibleReplicas(ms, { ...rules, minLsn: 100n, minTimeline: null })).toEqual([])
    expect(eligibleReplicas(ms, { ...rules, minLsn: 100n })).toEqual([])
  })

  it('round robin cycles; least-busy takes the lowest load', () => {
    const ms = [member('a', {}, 3), member('b', {}, 1), member('c', {}, 2)]
    expect([0, 1, 2, 3].map((i) => pickReplica(ms, 'round-robin', i).name)).toEqual(['a', 'b', 'c', 'a'])
    expect(pickReplica(ms, 'least-busy', 0).name).toBe('b')
  })
})

describe('WriterGate', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] }))
  afterEach(() => vi.useRealTimers())

  it('holds writes while no writer is confirmed and releases them on confirmation', async () => {
    const gate = new WriterGate(10, () => {})
    const a = member('a', { role: 'primary' })
    const w = gate.wait(undefined, performance.now() + 1_000)
    expect(gate.queueLength).toBe(1)
    gate.confirm(a)
    await expect(w).resolves.toBe(a)
    await expect(gate.wait(undefined, performance.now())).resolves.toBe(a)
  })

  it('fails held writes with E_FAILOVER_TIMEOUT at their deadline, and with E_LIMIT at once when the queue is full', async () => {
    const gate = new WriterGate(2, () => {})
    const r1 = gate.wait(undefined, performance.now() + 500, 'read') // reads take no place
    const w1 = gate.wait(undefined, performance.now() + 500)
    const w2 = gate.wait(undefined, performance.now() + 500)
    const w3 = gate.wait(undefined, performance.now() + 500)
    await expect(w3).rejects.toMatchObject({
      code: 'E_LIMIT',
      details: { reason: 'queue-full', maxQueue: 2 },
    })
    expect(gate.queueLength).toBe(2)
    const all = Promise.allSettled([r1, w1, w2])
    await vi.advanceTimersByTimeAsync(500)
    const results = await all
    for (const r of results) {
      expect(r.status).toBe('rejected')
      expect((r as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_FAILOVER_TIMEOUT',
        details: { reason: 'deadline' },
      })
    }
    expect(gate.queueLength).toBe(0)
  })

  it('an aborted signal rejects a held write with E_ABORTED and frees its slot', async () => {
    const gate = new WriterGate(1, () => {})
    const ac = new AbortController()
    const w = gate.wait(ac.signal, performance.now() + 10_000)
    ac.abort()
    await expect(w).rejects.toMatchObject({ code: 'E_ABORTED' })
    expect(gate.queueLength).toBe(0)
  })

  it('reports a failover with its timings once the first write succeeds on the new primary', async () => {
    const events: unknown[] = []
    const gate = new WriterGate(10, (e) => events.push(e))
    const a = member('a', { role: 'primary' })
    const b = member('b', { role: 'primary' })
    gate.confirm(a) // start: not a failover
    expect(gate.suspect('08006')).toBe(true)
    expect(gate.suspect('08006')).toBe(false) // once
    expect(gate.writer).toBeNull()
    await vi.advanceTimersByTimeAsync(9_000)
    gate.noteDiscovered('a') // the old leader still listed: not the new one
    await vi.advanceTimersByTimeAsync(500)
    gate.noteDiscovered('b')
    await vi.advanceTimersByTimeAsync(40)
    gate.confirm(b)
    expect(events).toEqual([])
    await vi.advanceTimersByTimeAsync(5)
    gate.noteWriteSuccess(b)
    expect(events).toHaveLength(1)
    expect(events[0]).toMatchObject({
      from: 'a',
      to: 'b',
      reason: '08006',
      durations: { heldMs: 9_540, confirmMs: 40, firstWriteMs: 5 },
    })
    expect(gate.failovers).toBe(1)
  })

  it('a suspicion cleared by re-confirming the same primary is not a failover', () => {
    const events: unknown[] = []
    const gate = new WriterGate(10, (e) => events.push(e))
    const a = member('a', { role: 'primary' })
    gate.confirm(a)
    gate.suspect('57P01')
    gate.confirm(a)
    gate.noteWriteSuccess(a)
    expect(events).toEqual([])
  })

  it('emits without firstSuccessAt when no write comes within 10 s', async () => {
    const events: Array<{ firstSuccessAt: number | null }> = []
    const gate = new WriterGate(10, (e) => events.push(e))
    gate.confirm(member('a', { role: 'primary' }))
    gate.suspect('ECONNRESET')
    gate.confirm(member('b', { role: 'primary' }))
    await vi.advanceTimersByTimeAsync(10_000)
    expect(events).toHaveLength(1)
    expect(events[0]!.firstSuccessAt).toBeNull()
  })

  it('close rejects every held write with the given error', async () => {
    const gate = new WriterGate(10, () => {})
    const w = gate.wait(undefined, performance.now() + 1_000)
    gate.close(new ResilientError('E_SHUTTING_DOWN', 'closed'))
    await expect(w).rejects.toMatchObject({ code: 'E_SHUTTING_DOWN' })
    await expect(gate.wait(undefined, performance.now() + 1_000)).rejects.toMatchObject({
      code: 'E_SHUTTING_DOWN',
    })
  })
})
