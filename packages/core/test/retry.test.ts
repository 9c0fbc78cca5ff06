import * as dc from 'node:diagnostics_channel'
import {
  channelNames,
  createRetry,
  decorrelatedJitter,
  metricsSnapshot,
  ResilientError,
  type RetryEvent,
  resetMetricsSnapshot,
  retry,
} from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

/** A small seeded generator (mulberry32): the same numbers on every run. */
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] })
  resetMetricsSnapshot()
})
afterEach(() => {
  vi.useRealTimers()
})

describe('decorrelatedJitter', () => {
  it('keeps every delay within [base, min(max, 3 x previous)] and spreads them', () => {
    const next = decorrelatedJitter(50, 2_000, seeded(42))
    let prev = 50
    const seen = new Set<number>()
    const outOfBounds: number[] = []
    for (let i = 0; i < 10_000; i++) {
      const d = next(prev)
      if (d < 50 || d > Math.min(2_000, prev * 3)) outOfBounds.push(d)
      seen.add(Math.round(d))
      prev = d
    }
    expect(outOfBounds).toEqual([])
    expect(seen.size).toBeGreaterThan(500)
  })

  it('reaches both ends with extreme random values', () => {
    expect(decorrelatedJitter(50, 2_000, () => 0)(400)).toBe(50)
    expect(decorrelatedJitter(50, 2_000, () => 0.9999999)(400)).toBeCloseTo(1_200, 2)
    expect(decorrelatedJitter(50, 2_000, () => 0.9999999)(1_500)).toBe(2_000)
  })
})

describe('retry policy', () => {
  it('retries up to maxAttempts and rethrows the last error as is', async () => {
    const errors = [new Error('e1'), new Error('e2'), new Error('e3')]
    const fn = vi.fn(async ({ attempt }: { attempt: number }) => {
      throw errors[attempt - 1]
    })
    const p = createRetry({ maxAttempts: 3, baseDelayMs: 10, random: () => 0 }).execute(fn)
    const settled = p.catch((e: unknown) => e)
    await vi.runAllTimersAsync()
    expect(await settled).toBe(errors[2])
    expect(fn).toHaveBeenCalledTimes(3)
    expect(fn.mock.calls.map((c) => c[0].attempt)).toEqual([1, 2, 3])
  })

  it('returns the first success and waits the jittered delays in between', async () => {
    const events: RetryEvent[] = []
    let n = 0
    const policy = createRetry({
      name: 'pg-connect',
      maxAttempts: 5,
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      random: () => 0.5,
      onRetry: (e) => events.push(e),
    })
    const p = policy.execute(async () => {
      if (++n < 3) throw new Error(`fail ${n}`)
      return 'done'
    })
    await vi.advanceTimersByTimeAsync(199)
    expect(n).toBe(1) // first delay is 100 + 0.5 * (300 - 100) = 200
    await vi.advanceTimersByTimeAsync(1)
    expect(n).toBe(2)
    await vi.runAllTimersAsync()
    await expect(p).resolves.toBe('done')
    expect(events.map((e) => [e.name, e.attempt, e.delayMs])).toEqual([
      ['pg-connect', 1, 200],
      ['pg-connect', 2, 350], // 100 + 0.5 * (3 * 200 - 100)
    ])
    expect(metricsSnapshot().retries).toEqual([
      { name: 'pg-connect', kind: 'successful_with_retry', count: 1 },
    ])
  })

  it('stops when shouldRetry says no, and tells it the attempt number', async () => {
    const shouldRetry = vi.fn((err: unknown, _attempt: number) => (err as Error).message !== 'fatal')
    let n = 0
    const p = createRetry({ maxAttempts: 10, baseDelayMs: 1, shouldRetry }).execute(async () => {
      n++
      throw new Error(n < 2 ? 'transient' : 'fatal')
    })
    const settled = p.catch((e: unknown) => e)
    await vi.runAllTimersAsync()
    expect(((await settled) as Error).message).toBe('fatal')
    expect(n).toBe(2)
    expect(shouldRetry.mock.calls.map((c) => c[1])).toEqual([1, 2])
  })

  it('starts no attempt whose wait would pass the deadline', async () => {
    const fn = vi.fn(async () => {
      throw new Error('down')
    })
    // Delays are exactly 100 (random 0): attempts at 0, 100, 200; the next wait would end at 300 > 250.
    const t0 = performance.now()
    const p = createRetry({ maxAttempts: 100, baseDelayMs: 100, deadlineMs: 250, random: () => 0 }).execute(
      fn,
    )
    const settled = p.catch((e: unknown) => e)
    await vi.runAllTimersAsync()
    expect(((await settled) as Error).message).toBe('down')
    expect(fn).toHaveBeenCalledTimes(3)
    expect(performance.now() - t0).toBe(200) // gave up at once instead of waiting past the deadline
  })

  it('an abort during the wait rejects at once with E_ABORTED and starts no new attempt', async () => {
    const ac = new AbortController()
    const fn = vi.fn(async () => {
      throw new Error('down')
    })
    const p = createRetry({ maxAttempts: 5, baseDelayMs: 10_000 }).execute(fn, { signal: ac.signal })
    const settled = p.catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(10)
    ac.abort()
    const err = await settled
    expect(ResilientError.is(err, 'E_ABORTED')).toBe(true)
    expect(fn).toHaveBeenCalledTimes(1)
    await vi.runAllTimersAsync()
    expect(fn).toHaveBeenCalledTimes(1)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('passes its signal to every attempt, and an already-aborted signal runs nothing', async () => {
    const ac = new AbortController()
    const fn = vi.fn(async ({ signal }: { signal: AbortSignal | undefined }) => signal)
    await expect(createRetry({ signal: ac.signal }).execute(fn)).resolves.toBe(ac.signal)
    const aborted = vi.fn(async () => 1)
    await expect(createRetry().execute(aborted, { signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'E_ABORTED',
    })
    expect(aborted).not.toHaveBeenCalled()
  })

  it('isolates a throwing onRetry listener and supports dispose', async () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {})
    const policy = createRetry({
      maxAttempts: 3,
      baseDelayMs: 1,
      onRetry: () => {
        throw new Error('listener bug')
      },
    })
    const seen = vi.fn()
    const d = policy.onRetry(seen)
    let n = 0
    const p = policy.execute(async () => {
      if (++n === 1) throw new Error('x')
      if (n === 2) {
        d.dispose()
        throw new Error('y')
      }
      return n
    })
    await vi.runAllTimersAsync()
    await expect(p).resolves.toBe(3)
    expect(seen).toHaveBeenCalledTimes(1)
    expect(warn).toHaveBeenCalled()
    warn.mockRestore()
  })

  it('publishes each retry on its channel', async () => {
    const seen: unknown[] = []
    const sub = (m: unknown) => seen.push(m)
    dc.subscribe(channelNames.retry, sub)
    try {
      const p = retry(
        async ({ attempt }) => {
          if (attempt === 1) throw new Error('x')
          return attempt
        },
        { name: 'r', baseDelayMs: 5, random: () => 0 },
      )
      await vi.runAllTimersAsync()
      await expect(p).resolves.toBe(2)
      expect(seen).toMatchObject([{ name: 'r', attempt: 1, delayMs: 5 }])
    } finally {
      dc.unsubscribe(channelNames.retry, sub)
    }
  })

  it('validates its options, naming the field', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ maxAttempts: 0 }, 'retry.maxAttempts'],
      [{ maxAttempts: 2.5 }, 'retry.maxAttempts'],
      [{ baseDelayMs: -1 }, 'retry.baseDelayMs'],
      [{ baseDelayMs: 100, maxDelayMs: 50 }, 'retry.maxDelayMs'],
      [{ deadlineMs: -5 }, 'retry.deadlineMs'],
      [{ shouldRetry: 'yes' }, 'retry.shouldRetry'],
      [{ onRetry: 1 }, 'retry.onRetry'],
      [{ signal: {} }, 'retry.signal'],
      [{ maxAttempt: 3 }, 'retry.maxAttempt'],
    ]
    for (const [options, field] of cases) {
      expect(() => createRetry(options as never), field).toThrow(field)
    }
    // A large base delay lifts the default maximum instead of failing.
    expect(() => createRetry({ baseDelayMs: 5_000 })).not.toThrow()
  })
})
