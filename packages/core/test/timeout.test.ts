import * as dc from 'node:diagnostics_channel'
import { getEventListeners } from 'node:events'
import { channelNames, ResilientError, sleep, withTimeout } from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] })
})
afterEach(() => {
  vi.useRealTimers()
})

describe('withTimeout', () => {
  it('1,000 concurrent calls with one slow: only the slow one times out and only its signal aborts', async () => {
    const signals: AbortSignal[] = []
    const calls = Array.from({ length: 1_000 }, (_, i) =>
      withTimeout(
        (signal) => {
          signals.push(signal!)
          return i === 500 ? new Promise<number>(() => {}) : Promise.resolve(i)
        },
        100,
        { operation: 'query' },
      ),
    )
    const results = Promise.allSettled(calls)
    await vi.advanceTimersByTimeAsync(100)
    const settled = await results
    const rejected = settled.filter((r) => r.status === 'rejected')
    expect(rejected).toHaveLength(1)
    expect(settled[500]!.status).toBe('rejected')
    const err = (settled[500] as PromiseRejectedResult).reason
    expect(ResilientError.is(err, 'E_TIMEOUT')).toBe(true)
    expect(err.message).toBe('query timed out after 100 ms')
    expect(signals.filter((s) => s.aborted)).toEqual([signals[500]])
    expect(signals[500]!.reason).toBe(err)
    expect(new Set(signals).size).toBe(1_000)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('clears its timer and its listener on the caller signal once the call settles', async () => {
    const parent = new AbortController()
    await withTimeout(async () => 'x', 1_000, { signal: parent.signal })
    await withTimeout(async () => Promise.reject(new Error('no')), 1_000, { signal: parent.signal }).catch(
      () => {},
    )
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(0)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('a caller abort rejects with E_ABORTED (or the reason if it is ours) and aborts the work', async () => {
    const parent = new AbortController()
    let inner: AbortSignal | undefined
    const p = withTimeout(
      (signal) => {
        inner = signal
        return new Promise<never>(() => {})
      },
      1_000,
      { signal: parent.signal, operation: 'read' },
    ).catch((e: unknown) => e)
    parent.abort(new Error('client left'))
    const err = (await p) as ResilientError
    expect(err.code).toBe('E_ABORTED')
    expect((err.cause as Error).message).toBe('client left')
    expect(inner!.aborted).toBe(true)
    expect(vi.getTimerCount()).toBe(0)

    const outer = new ResilientError('E_TIMEOUT', 'outer budget')
    await expect(withTimeout(async () => 1, 100, { signal: AbortSignal.abort(outer) })).rejects.toBe(outer)
  })

  it('a late rejection of timed-out work is swallowed, not unhandled', async () => {
    const unhandled = vi.fn()
    process.on('unhandledRejection', unhandled)
    try {
      let rejectWork!: (e: unknown) => void
      const p = withTimeout(() => new Promise<never>((_, rej) => (rejectWork = rej)), 10).catch(
        (e: unknown) => e,
      )
      await vi.advanceTimersByTimeAsync(10)
      expect(ResilientError.is(await p, 'E_TIMEOUT')).toBe(true)
      rejectWork(new Error('late'))
      await vi.advanceTimersByTimeAsync(0)
      await new Promise((r) => setImmediate(r))
      expect(unhandled).not.toHaveBeenCalled()
    } finally {
      process.off('unhandledRejection', unhandled)
    }
  })

  it('with no timeout passes the caller signal through and creates no timer; sync throws become rejections', async () => {
    const parent = new AbortController()
    await expect(withTimeout(async (s) => s, 0, { signal: parent.signal })).resolves.toBe(parent.signal)
    await expect(withTimeout(async (s) => s, Number.POSITIVE_INFINITY)).resolves.toBeUndefined()
    const boom = () => {
      throw new Error('sync')
    }
    await expect(withTimeout(boom, 0)).rejects.toThrow('sync')
    await expect(withTimeout(boom, 100)).rejects.toThrow('sync')
    expect(vi.getTimerCount()).toBe(0)
  })

  it('a fn declared without a parameter gets no signal (cheaper) but is still timed out', async () => {
    let received: unknown = 'unset'
    const p = withTimeout(function noParam(...args: unknown[]) {
      received = args[0]
      return new Promise<never>(() => {})
    }, 30).catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(30)
    expect(ResilientError.is(await p, 'E_TIMEOUT')).toBe(true)
    expect(received).toBeUndefined()
    let withParam: AbortSignal | undefined
    await withTimeout(async (signal) => {
      withParam = signal
    }, 30)
    expect(withParam).toBeInstanceOf(AbortSignal)
  })

  it('rejects a negative or NaN ms as a bug, and treats a delay past setTimeout’s limit as none', async () => {
    await expect(withTimeout(async () => 1, -1)).rejects.toMatchObject({ code: 'E_CONFIG' })
    await expect(withTimeout(async () => 1, Number.NaN)).rejects.toMatchObject({ code: 'E_CONFIG' })
    const p = withTimeout(async () => 'late but fine', 2 ** 31)
    expect(vi.getTimerCount()).toBe(0) // no timer that would fire at once
    await expect(p).resolves.toBe('late but fine')
  })

  it('publishes on the timeout channel', async () => {
    const seen: unknown[] = []
    const sub = (m: unknown) => seen.push(m)
    dc.subscribe(channelNames.timeout, sub)
    try {
      const p = withTimeout(() => new Promise<never>(() => {}), 20, { operation: 'GET' }).catch(() => {})
      await vi.advanceTimersByTimeAsync(20)
      await p
      expect(seen).toEqual([{ operation: 'GET', timeoutMs: 20 }])
    } finally {
      dc.unsubscribe(channelNames.timeout, sub)
    }
  })
})

describe('sleep', () => {
  it('resolves after ms and leaves no listener behind', async () => {
    const ac = new AbortController()
    let done = false
    const p = sleep(50, ac.signal).then(() => {
      done = true
    })
    await vi.advanceTimersByTimeAsync(49)
    expect(done).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    await p
    expect(done).toBe(true)
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0)
  })

  it('rejects with E_ABORTED on abort and clears its timer', async () => {
    const ac = new AbortController()
    const p = sleep(10_000, ac.signal).catch((e: unknown) => e)
    ac.abort()
    expect(ResilientError.is(await p, 'E_ABORTED')).toBe(true)
    expect(vi.getTimerCount()).toBe(0)
    await expect(sleep(1, AbortSignal.abort())).rejects.toMatchObject({ code: 'E_ABORTED' })
  })

  it('does not keep the process alive unless asked to', () => {
    vi.useRealTimers()
    const spy = vi.spyOn(globalThis, 'setTimeout')
    try {
      const ac = new AbortController()
      sleep(60_000, ac.signal).catch(() => {})
      sleep(60_000, ac.signal, { ref: true }).catch(() => {})
      const [unrefd, refd] = spy.mock.results.map((r) => r.value as NodeJS.Timeout)
      expect(unrefd!.hasRef()).toBe(false)
      expect(refd!.hasRef()).toBe(true)
      ac.abort()
    } finally {
      spy.mockRestore()
    }
  })
})
