import * as dc from 'node:diagnostics_channel'
import { createRequire } from 'node:module'
import {
  type Breaker,
  type BreakerStateChange,
  channelNames,
  createBreaker,
  listBreakers,
  ResilientError,
} from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

const fail = () => Promise.reject(new Error('down'))
const ok = () => Promise.resolve('ok')

function deferred<T>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

const breakers: Breaker[] = []
function make(options: Parameters<typeof createBreaker>[0] = {}) {
  const b = createBreaker({
    volumeThreshold: 4,
    errorThresholdPercentage: 50,
    resetTimeoutMs: 1_000,
    ...options,
  })
  breakers.push(b)
  const changes: string[] = []
  b.onStateChange((c: BreakerStateChange) => changes.push(`${c.from}->${c.to}`))
  return { b, changes }
}

async function trip(b: Breaker, n = 4) {
  for (let i = 0; i < n; i++) await b.execute(fail).catch(() => {})
}

beforeEach(() => {
  vi.useFakeTimers({
    toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'],
  })
})
afterEach(() => {
  for (const b of breakers.splice(0)) b.shutdown()
  vi.useRealTimers()
})

describe('breaker state machine', () => {
  it('stays closed below the volume threshold, opens once volume and threshold are reached', async () => {
    const { b, changes } = make()
    await trip(b, 3)
    expect(b.state).toBe('closed') // 3 of 3 failed, but fewer than 4 calls
    await trip(b, 1)
    expect(b.state).toBe('open')
    expect(changes).toEqual(['closed->open'])
    expect(b.stats()).toMatchObject({ failures: 4, successes: 0, rejects: 0, failureRate: 100 })
  })

  it('does not open while the failure rate stays at or under the threshold', async () => {
    const { b } = make()
    for (let i = 0; i < 10; i++) {
      await b.execute(ok)
      await b.execute(fail).catch(() => {})
    }
    expect(b.state).toBe('closed') // 50% is not more than 50%
    expect(b.stats().failureRate).toBe(50)
  })

  it('while open rejects at once with E_CIRCUIT_OPEN, without calling fn or capturing a stack', async () => {
    const { b } = make()
    await trip(b)
    const fn = vi.fn(ok)
    const err = await b.execute(fn).catch((e: unknown) => e)
    expect(fn).not.toHaveBeenCalled()
    expect(ResilientError.is(err, 'E_CIRCUIT_OPEN')).toBe(true)
    expect((err as Error).stack).not.toMatch(/\n\s+at /)
    expect((err as ResilientError).details.breaker).toBe(b.name)
    expect(b.stats().rejects).toBe(1)
  })

  it('half-open lets exactly one trial through, and closes when it succeeds', async () => {
    const { b, changes } = make()
    await trip(b)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(b.state).toBe('half-open')

    const trial = deferred<string>()
    const fn = vi.fn(() => trial.promise)
    const first = b.execute(fn)
    const others = await Promise.allSettled(Array.from({ length: 5 }, () => b.execute(fn)))
    expect(fn).toHaveBeenCalledTimes(1)
    for (const r of others) {
      expect(r.status).toBe('rejected')
      expect(ResilientError.is((r as PromiseRejectedResult).reason, 'E_CIRCUIT_OPEN')).toBe(true)
    }
    trial.resolve('back')
    await expect(first).resolves.toBe('back')
    expect(b.state).toBe('closed')
    expect(changes).toEqual(['closed->open', 'open->half-open', 'half-open->closed'])
    await expect(b.execute(ok)).resolves.toBe('ok')
  })

  it('re-opens when the trial fails, and tries again after another reset timeout', async () => {
    const { b, changes } = make()
    await trip(b)
    await vi.advanceTimersByTimeAsync(1_000)
    await expect(b.execute(fail)).rejects.toThrow('down')
    expect(b.state).toBe('open')
    await vi.advanceTimersByTimeAsync(999)
    expect(b.state).toBe('open')
    await vi.advanceTimersByTimeAsync(1)
    expect(b.state).toBe('half-open')
    expect(changes).toEqual(['closed->open', 'open->half-open', 'half-open->open', 'open->half-open'])
  })

  it('does not count errors that isFailure rejects', async () => {
    const notFound = Object.assign(new Error('not found'), { status: 404 })
    const { b } = make({ isFailure: (err) => (err as { status?: number }).status !== 404 })
    for (let i = 0; i < 10; i++) await b.execute(() => Promise.reject(notFound)).catch(() => {})
    expect(b.state).toBe('closed')
    expect(b.stats()).toMatchObject({ failures: 0, successes: 10 })
    await trip(b, 12)
    expect(b.state).toBe('open')
  })

  it('counts a failure when isFailure itself throws', async () => {
    const { b } = make({
      isFailure: () => {
        throw new Error('bad filter')
      },
    })
    await trip(b)
    expect(b.state).toBe('open')
  })

  it('a timeout fails the call with E_TIMEOUT, counts as a failure, and aborts only that call’s signal', async () => {
    const { b } = make({ timeoutMs: 100 })
    const signals: AbortSignal[] = []
    const slow = b.execute(
      (signal) =>
        new Promise<never>(() => {
          signals.push(signal!)
        }),
    )
    const fast = b.execute(async (signal) => {
      signals.push(signal!)
      return 'fast'
    })
    await expect(fast).resolves.toBe('fast')
    const settled = slow.catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(100)
    const err = await settled
    expect(ResilientError.is(err, 'E_TIMEOUT')).toBe(true)
    expect(signals[0]!.aborted).toBe(true)
    expect(signals[0]!.reason).toBe(err)
    expect(signals[1]!.aborted).toBe(false)
    expect(signals[0]).not.toBe(signals[1])
    expect(b.stats()).toMatchObject({ failures: 1, timeouts: 1, successes: 1 })
  })

  it('timeouts alone open the breaker', async () => {
    const { b } = make({ timeoutMs: 50 })
    const calls = Array.from({ length: 4 }, () =>
      b.execute(() => new Promise<never>(() => {})).catch(() => {}),
    )
    await vi.advanceTimersByTimeAsync(50)
    await Promise.all(calls)
    expect(b.state).toBe('open')
  })

  it('a caller abort is not a failure of the dependency', async () => {
    const { b } = make({ timeoutMs: 1_000 })
    for (let i = 0; i < 6; i++) {
      const ac = new AbortController()
      const p = b.execute(() => new Promise<never>(() => {}), { signal: ac.signal }).catch((e: unknown) => e)
      ac.abort()
      expect(ResilientError.is(await p, 'E_ABORTED')).toBe(true)
    }
    expect(b.state).toBe('closed')
    expect(b.stats().failures).toBe(0)
    // An already-aborted signal never reaches fn.
    const fn = vi.fn(ok)
    await expect(b.execute(fn, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'E_ABORTED' })
    expect(fn).not.toHaveBeenCalled()
  })

  it('a half-open trial aborted by its caller re-opens the breaker rather than closing it', async () => {
    const { b } = make()
    await trip(b)
    await vi.advanceTimersByTimeAsync(1_000)
    const ac = new AbortController()
    const p = b
      .execute(
        (signal) =>
          new Promise<never>((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason))),
        { signal: ac.signal },
      )
      .catch((e: unknown) => e)
    ac.abort(new ResilientError('E_ABORTED', 'client went away'))
    expect(ResilientError.is(await p, 'E_ABORTED')).toBe(true)
    expect(b.state).toBe('open')
  })

  it('a non-function is a TypeError and is not counted against the dependency', async () => {
    const { b } = make()
    for (let i = 0; i < 6; i++) await expect(b.execute(42 as never)).rejects.toThrow(TypeError)
    expect(b.state).toBe('closed')
    expect(b.stats()).toMatchObject({ failures: 0, successes: 0 })
  })

  it('open() and close() force the state', async () => {
    const { b, changes } = make()
    b.open()
    expect(b.state).toBe('open')
    await expect(b.execute(ok)).rejects.toMatchObject({ code: 'E_CIRCUIT_OPEN' })
    b.close()
    expect(b.state).toBe('closed')
    await expect(b.execute(ok)).resolves.toBe('ok')
    expect(changes).toEqual(['closed->open', 'open->closed'])
  })

  it('publishes state changes on its diagnostics channel', async () => {
    const seen: unknown[] = []
    const onMessage = (m: unknown) => seen.push(m)
    dc.subscribe(channelNames.breakerState, onMessage)
    try {
      const { b } = make({ name: 'redis' })
      await trip(b)
      expect(seen).toEqual([{ name: 'redis', from: 'closed', to: 'open' }])
    } finally {
      dc.unsubscribe(channelNames.breakerState, onMessage)
    }
  })

  it('a throwing state listener does not break the breaker', async () => {
    const { b } = make()
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {})
    b.onStateChange(() => {
      throw new Error('listener bug')
    })
    const after = vi.fn()
    b.onStateChange(after)
    await trip(b)
    expect(b.state).toBe('open')
    expect(after).toHaveBeenCalledTimes(1)
    expect(warn).toHaveBeenCalled()
    warn.mockRestore()
  })

  it('a disposed listener hears nothing more', async () => {
    const { b } = make()
    const listener = vi.fn()
    const d = b.onStateChange(listener)
    d.dispose()
    await trip(b)
    expect(listener).not.toHaveBeenCalled()
  })
})

describe('breaker closed path (fed to opossum without fire())', () => {
  const require = createRequire(import.meta.url)
  const CircuitBreaker = require('opossum') as { prototype: { fire(...args: unknown[]): Promise<unknown> } }

  it('runs closed calls without opossum’s fire(); the half-open trial goes through it', async () => {
    const spy = vi.spyOn(CircuitBreaker.prototype, 'fire')
    try {
      const { b } = make()
      for (let i = 0; i < 20; i++) await b.execute(ok)
      expect(spy).not.toHaveBeenCalled()
      await trip(b, 30) // 30 failed of 50
      expect(b.state).toBe('open')
      expect(spy).not.toHaveBeenCalled()
      await vi.advanceTimersByTimeAsync(1_000)
      await expect(b.execute(ok)).resolves.toBe('ok')
      expect(spy).toHaveBeenCalledTimes(1)
      expect(b.state).toBe('closed')
    } finally {
      spy.mockRestore()
    }
  })

  it('returns the value of fn, also when fn returns a non-promise', async () => {
    const { b } = make()
    await expect(b.execute(() => 7 as unknown as Promise<number>)).resolves.toBe(7)
    const value = { a: 1 }
    await expect(b.execute(async () => value)).resolves.toBe(value)
    expect(b.stats()).toMatchObject({ successes: 2, failures: 0 })
  })

  it('a synchronous throw from fn is a failed call: rejected, counted, and it can open the breaker', async () => {
    const { b } = make()
    const boom = new Error('sync')
    for (let i = 0; i < 4; i++) {
      await expect(
        b.execute(() => {
          throw boom
        }),
      ).rejects.toBe(boom)
    }
    expect(b.stats()).toMatchObject({ failures: 4 })
    expect(b.state).toBe('open')
  })

  it('counts the outcome before the caller resumes', async () => {
    const { b } = make()
    for (let i = 0; i < 3; i++) await b.execute(fail).catch(() => {})
    let seen: string | undefined
    await b.execute(fail).catch(() => {
      seen = b.state
    })
    expect(seen).toBe('open')
  })

  it('a failure that lands after the breaker opened is counted and keeps it open', async () => {
    const { b, changes } = make()
    const late = deferred<never>()
    const inFlight = b.execute(() => late.promise).catch((e: unknown) => e)
    await trip(b, 3) // with the call in flight: 3 failed of 4 calls
    expect(b.state).toBe('open')
    late.reject(new Error('late'))
    expect(((await inFlight) as Error).message).toBe('late')
    expect(b.stats()).toMatchObject({ failures: 4, successes: 0, rejects: 0 })
    expect(changes).toEqual(['closed->open'])
  })

  it('a call that started closed and succeeds while half-open closes the breaker (as opossum does)', async () => {
    const { b, changes } = make()
    const slow = deferred<string>()
    const inFlight = b.execute(() => slow.promise)
    await trip(b)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(b.state).toBe('half-open')
    slow.resolve('late ok')
    await expect(inFlight).resolves.toBe('late ok')
    expect(b.state).toBe('closed')
    expect(changes).toEqual(['closed->open', 'open->half-open', 'half-open->closed'])
  })

  it('a call that settles after shutdown() is neither counted nor a crash', async () => {
    const { b } = make()
    const slow = deferred<string>()
    const failing = deferred<string>()
    const a = b.execute(() => slow.promise)
    const c = b.execute(() => failing.promise).catch((e: unknown) => e)
    b.shutdown()
    slow.resolve('done')
    failing.reject(new Error('after shutdown'))
    await expect(a).resolves.toBe('done')
    expect(((await c) as Error).message).toBe('after shutdown')
    expect(b.stats()).toMatchObject({ successes: 0, failures: 0 })
    expect(b.state).toBe('closed')
  })
})

describe('breaker resources', () => {
  it('keeps one timer per breaker (bucket rotation): no snapshot timer, no per-call timer without timeoutMs', async () => {
    const before = vi.getTimerCount()
    const { b } = make()
    expect(vi.getTimerCount() - before).toBe(1)
    await Promise.all(Array.from({ length: 100 }, () => b.execute(ok)))
    expect(vi.getTimerCount() - before).toBe(1)
    b.shutdown()
    expect(vi.getTimerCount() - before).toBe(0)
  })

  it('keeps no per-call latency sample in opossum’s window (opossum 9 does, even with percentiles off)', async () => {
    const require = createRequire(import.meta.url)
    const Status = require('opossum/lib/status.js') as {
      prototype: { increment(p: string, l?: number): void }
    }
    const CircuitBreaker = require('opossum') as new (
      fn: () => Promise<unknown>,
      o: object,
    ) => {
      fire(): Promise<unknown>
      shutdown(): void
    }
    const spy = vi.spyOn(Status.prototype, 'increment')
    try {
      const raw = new CircuitBreaker(ok, {
        timeout: false,
        rollingPercentilesEnabled: false,
        enableSnapshots: false,
      })
      await raw.fire()
      raw.shutdown()
      expect(spy).toHaveBeenCalled() // control: opossum's own counting goes through it
      spy.mockClear()
      const { b } = make()
      await Promise.all(Array.from({ length: 100 }, () => b.execute(ok)))
      await trip(b)
      expect(spy).not.toHaveBeenCalled()
      expect(b.stats().failureRate).toBeCloseTo((4 / 104) * 100, 5) // the window still counts
    } finally {
      spy.mockRestore()
    }
  })

  it('its background timer does not keep the process alive', () => {
    vi.useRealTimers()
    const spy = vi.spyOn(globalThis, 'setInterval')
    try {
      const { b } = make()
      const timers = spy.mock.results.map((r) => r.value as NodeJS.Timeout)
      expect(timers).toHaveLength(1)
      expect(timers[0]!.hasRef()).toBe(false)
      b.shutdown()
    } finally {
      spy.mockRestore()
    }
  })

  it('clears each call’s timeout timer when the call settles', async () => {
    const before = vi.getTimerCount()
    const { b } = make({ timeoutMs: 5_000 })
    await Promise.all(Array.from({ length: 100 }, () => b.execute(ok)))
    expect(vi.getTimerCount() - before).toBe(1)
  })

  it('shutdown leaves listBreakers() and rejects later calls', async () => {
    const { b } = make({ name: 'to-shut' })
    expect(listBreakers()).toContain(b)
    b.shutdown()
    expect(listBreakers()).not.toContain(b)
    await expect(b.execute(ok)).rejects.toMatchObject({ code: 'E_CIRCUIT_OPEN' })
    b.shutdown() // twice is fine
  })
})

describe('breaker options', () => {
  const bad: [Record<string, unknown>, string][] = [
    [{ name: '' }, 'breaker.name'],
    [{ errorThresholdPercentage: 0 }, 'breaker.errorThresholdPercentage'],
    [{ errorThresholdPercentage: 101 }, 'breaker.errorThresholdPercentage'],
    [{ volumeThreshold: -1 }, 'breaker.volumeThreshold'],
    [{ volumeThreshold: 1.5 }, 'breaker.volumeThreshold'],
    [{ resetTimeoutMs: 0 }, 'breaker.resetTimeoutMs'],
    [{ rollingWindowMs: 5 }, 'breaker.rollingWindowMs'],
    [{ rollingWindowMs: 10_000, rollingBuckets: 3 }, 'breaker.rollingBuckets'],
    [{ timeoutMs: -1 }, 'breaker.timeoutMs'],
    [{ timeoutMs: '100' }, 'breaker.timeoutMs'],
    [{ isFailure: true }, 'breaker.isFailure'],
    [{ resetTimeout: 100 }, 'breaker.resetTimeout'],
  ]
  for (const [options, field] of bad) {
    it(`rejects ${JSON.stringify(options)} naming ${field}`, () => {
      try {
        createBreaker(options as never)
        expect.unreachable()
      } catch (err) {
        expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
        expect((err as Error).message).toContain(field)
      }
    })
  }
})

describe('consecutiveFailures', () => {
  it('opens after N failures in a row even when the window is full of successes', async () => {
    const { b, changes } = make({ consecutiveFailures: 3, volumeThreshold: 10 })
    for (let i = 0; i < 1_000; i++) await b.execute(ok)
    await trip(b, 2)
    expect(b.state).toBe('closed') // 2 of 1,002 failed: the percentage alone would wait
    await trip(b, 1)
    expect(b.state).toBe('open')
    expect(changes).toEqual(['closed->open'])
    await expect(b.execute(ok)).rejects.toMatchObject({ code: 'E_CIRCUIT_OPEN' })
  })

  it('a success in between starts the count again; 0 (the default) never opens on a streak', async () => {
    const { b } = make({ consecutiveFailures: 3, volumeThreshold: 1_000 })
    for (let i = 0; i < 10; i++) {
      await trip(b, 2)
      await b.execute(ok)
    }
    expect(b.state).toBe('closed')
    const off = make({ volumeThreshold: 1_000 }).b
    await trip(off, 50)
    expect(off.state).toBe('closed')
  })

  it('counts again from zero after the breaker closes', async () => {
    const { b } = make({ consecutiveFailures: 2, volumeThreshold: 1_000 })
    await trip(b, 2)
    expect(b.state).toBe('open')
    await vi.advanceTimersByTimeAsync(1_000)
    expect(b.state).toBe('half-open')
    await b.execute(ok)
    expect(b.state).toBe('closed')
    await trip(b, 1)
    expect(b.state).toBe('closed')
    await trip(b, 1)
    expect(b.state).toBe('open')
  })

  it('rejects a bad value with E_CONFIG naming the field', () => {
    expect(() => createBreaker({ consecutiveFailures: -1 })).toThrow(/breaker\.consecutiveFailures/)
    expect(() => createBreaker({ consecutiveFailures: 1.5 })).toThrow(/breaker\.consecutiveFailures/)
  })
})
