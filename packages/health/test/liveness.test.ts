import { createHealth } from '@resilient/health'
import { describe, expect, it, vi } from 'vitest'
import { monitorEventLoop } from '../src/event-loop.js'
import { call } from './helpers.js'

describe('event-loop monitor (timer drift)', () => {
  it('flags a late timer as a stall for windowMs, then recovers', async () => {
    vi.useFakeTimers()
    try {
      const stalls: number[] = []
      // Fake Date.now advances with the fake timers; setSystemTime moves it without firing any.
      const m = monitorEventLoop(
        { maxDelayMs: 500, sampleMs: 100, windowMs: 1_000 },
        (lag) => stalls.push(lag),
        () => Date.now(),
      )
      const step = (ms: number) => vi.advanceTimersByTimeAsync(ms)
      await step(1_000)
      expect(m.status().healthy).toBe(true)
      // The loop is blocked: time passes but no timer fires.
      vi.setSystemTime(Date.now() + 1_500)
      expect(m.status()).toEqual({ healthy: false, lagMs: 1_400 }) // overdue: due at +100 ms
      await step(100) // the delayed sample fires 1.5 s late
      expect(stalls).toEqual([1_500])
      expect(m.status()).toMatchObject({ healthy: false, lagMs: 1_500 })
      await step(900)
      expect(m.status().healthy).toBe(false)
      await step(200)
      expect(m.status().healthy).toBe(true)
      m.stop()
    } finally {
      vi.useRealTimers()
    }
  })
})

describe('liveness', () => {
  it('is 200 and never calls a dependency check', async () => {
    vi.useFakeTimers()
    try {
      const check = vi.fn(async () => false)
      const health = createHealth({ autoStart: false, verbose: 'query', checks: { db: check } })
      for (let i = 0; i < 100; i++) {
        const r = call(health.liveness, '/healthz')
        expect(r.statusCode).toBe(200)
        expect(r.json).toEqual({ status: 'pass' })
        await vi.advanceTimersByTimeAsync(100)
      }
      expect(check).not.toHaveBeenCalled()
      expect(call(health.liveness, '/healthz?verbose=1').json.checks['eventLoop:delay'][0]).toMatchObject({
        status: 'pass',
        observedUnit: 'ms',
      })
    } finally {
      vi.useRealTimers()
    }
  })

  it('fails after a real event-loop stall past maxDelayMs, with readiness unaffected by it', async () => {
    const health = createHealth({
      eventLoop: { maxDelayMs: 100, sampleMs: 10, windowMs: 60_000 },
      checks: {},
      verbose: 'query',
    })
    await new Promise((r) => setTimeout(r, 30))
    const until = performance.now() + 300
    while (performance.now() < until) {
      // block the loop for 300 ms
    }
    expect(call(health.liveness, '/healthz').json).toEqual({ status: 'fail' }) // public: status only
    const during = call(health.liveness, '/healthz?verbose=1')
    expect(during.statusCode).toBe(503)
    expect(during.json.status).toBe('fail')
    expect(during.json.output).toMatch(/^event loop delay of \d+ ms exceeds 100 ms$/)
    expect(during.headers['content-type']).toBe('application/health+json')
    await new Promise((r) => setTimeout(r, 30))
    expect(call(health.liveness, '/healthz').statusCode).toBe(503) // still within windowMs
  })

  it('stays 200 during a shutdown while readiness turns 503 at once', async () => {
    const health = createHealth({ drainDelayMs: 0, checks: { db: async () => true }, autoStart: false })
    await health.refresh()
    expect(call(health.readiness).statusCode).toBe(200)
    const done = health.shutdown()
    const ready = call(health.readiness)
    expect([ready.statusCode, ready.json.status, ready.json.output]).toEqual([503, 'fail', 'shutting down'])
    expect(call(health.liveness).statusCode).toBe(200)
    await done
    expect(call(health.liveness).statusCode).toBe(200)
  })
})
