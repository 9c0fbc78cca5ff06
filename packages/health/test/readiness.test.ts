import { createBreaker } from '@resilient/core'
import { type CheckResult, createHealth } from '@resilient/health'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { call, deferred } from './helpers.js'

beforeEach(() => {
  vi.useFakeTimers()
})
afterEach(() => {
  vi.useRealTimers()
})

// 'query': these tests read the verbose view with ?verbose=1 (the default, false, never gives it).
const quiet = { eventLoop: false as const, verbose: 'query' as const }

describe('readiness: cached, single-flight, bounded checks', () => {
  it('is 503 before the first results, then 200 once the checks pass', async () => {
    const gate = deferred<boolean>()
    const health = createHealth({ ...quiet, checks: { db: { check: () => gate.promise } } })
    const first = call(health.readiness, '/ready?verbose=1')
    expect(first.statusCode).toBe(503)
    expect(first.headers['content-type']).toBe('application/health+json')
    expect(first.json.status).toBe('fail')
    expect(first.json.checks.db[0]).toMatchObject({
      componentId: 'db',
      status: 'fail',
      output: 'not checked yet',
    })
    gate.resolve(true)
    await vi.advanceTimersByTimeAsync(0)
    const second = call(health.readiness, '/ready')
    expect(second.statusCode).toBe(200)
    expect(second.json.status).toBe('pass')
  })

  it('can be ready before the first results when configured', () => {
    const health = createHealth({
      ...quiet,
      readyBeforeFirstCheck: true,
      checks: { db: () => new Promise(() => {}) },
    })
    expect(call(health.readiness).statusCode).toBe(200)
  })

  it('N concurrent probes cause one check call', async () => {
    const check = vi.fn(() => new Promise<CheckResult>((r) => setTimeout(() => r({ status: 'pass' }), 50)))
    const health = createHealth({ ...quiet, autoStart: false, checks: { db: { check } } })
    for (let i = 0; i < 500; i++) call(health.readiness)
    const pending = Promise.all([health.refresh(), health.refresh(), health.refresh()])
    await vi.advanceTimersByTimeAsync(50)
    const refreshes = await pending
    expect(check).toHaveBeenCalledTimes(1)
    expect(refreshes.map((r) => r.status)).toEqual(['pass', 'pass', 'pass'])
    expect(health.checkCalls()).toEqual({ db: 1 })
  })

  it('runs each check at most once per interval, however many probes arrive', async () => {
    const check = vi.fn(async () => true)
    const fast = vi.fn(async () => true)
    const health = createHealth({
      ...quiet,
      intervalMs: 1_000,
      checks: { db: check, cache: { check: fast, intervalMs: 250, critical: false } },
    })
    // 10 s of probes every 10 ms.
    for (let t = 0; t < 10_000; t += 10) {
      call(health.readiness)
      await vi.advanceTimersByTimeAsync(10)
    }
    expect(check.mock.calls.length).toBeLessThanOrEqual(11)
    expect(check.mock.calls.length).toBeGreaterThanOrEqual(10)
    expect(fast.mock.calls.length).toBeLessThanOrEqual(41)
    expect(fast.mock.calls.length).toBeGreaterThanOrEqual(40)
  })

  it('refreshes in the background without probes', async () => {
    const check = vi.fn(async () => true)
    createHealth({ ...quiet, intervalMs: 100, checks: { db: check } })
    await vi.advanceTimersByTimeAsync(1_000)
    expect(check.mock.calls.length).toBeGreaterThanOrEqual(10)
    expect(check.mock.calls.length).toBeLessThanOrEqual(11)
  })

  it('a check past its timeout fails, and its signal aborts', async () => {
    let seen: AbortSignal | undefined
    const health = createHealth({
      ...quiet,
      timeoutMs: 200,
      checks: {
        db: ({ signal }) => {
          seen = signal
          return new Promise(() => {})
        },
      },
    })
    await vi.advanceTimersByTimeAsync(199)
    expect(seen?.aborted).toBe(false)
    expect(call(health.readiness, '/ready?verbose=1').json.checks.db[0].output).toBe('not checked yet')
    await vi.advanceTimersByTimeAsync(2)
    expect(seen?.aborted).toBe(true)
    const r = call(health.readiness, '/ready?verbose=1')
    expect(r.statusCode).toBe(503)
    expect(r.json.checks['db:responseTime'][0].output).toMatch(/timed out after 200 ms/)
  })

  it('a thrown error fails with its message, never its stack or cause', async () => {
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: {
        db: async () => {
          throw new Error('connect ECONNREFUSED 127.0.0.1:5432', { cause: new Error('secret-cause') })
        },
      },
    })
    await health.refresh()
    const r = call(health.readiness, '/ready?verbose=1')
    expect(r.statusCode).toBe(503)
    expect(r.json.checks['db:responseTime'][0].output).toBe('connect ECONNREFUSED 127.0.0.1:5432')
    expect(r.body).not.toMatch(/secret-cause|at .*\.ts/)
  })

  it('true, undefined and results pass; false and invalid results fail', async () => {
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: {
        t: async () => true,
        u: async () => undefined,
        r: async () => ({ status: 'warn', output: 'slow' }) as CheckResult,
        f: { check: async () => false, critical: false },
        bad: { check: async () => ({ status: 'ok' }) as unknown as CheckResult, critical: false },
        sync: { check: () => true },
      },
    })
    const report = await health.refresh()
    const statusOf = (k: string) => report.checks[k]?.[0]?.status
    expect(statusOf('t:responseTime')).toBe('pass')
    expect(statusOf('u:responseTime')).toBe('pass')
    expect(statusOf('sync:responseTime')).toBe('pass')
    expect(statusOf('r:responseTime')).toBe('warn')
    expect(statusOf('f:responseTime')).toBe('fail')
    expect(report.checks['bad:responseTime']?.[0]?.output).toBe('check returned an invalid status')
    expect(report.status).toBe('warn')
  })

  it('a failing critical check is 503; a failing non-critical one is 200 warn', async () => {
    let dbUp = true
    let cacheUp = true
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: {
        db: { check: async () => dbUp },
        cache: { check: async () => cacheUp, critical: false },
      },
    })
    await health.refresh()
    expect(call(health.readiness).statusCode).toBe(200)
    cacheUp = false
    await health.refresh()
    const warn = call(health.readiness)
    expect([warn.statusCode, warn.json.status]).toEqual([200, 'warn'])
    expect(warn.json.checks.cache[0].status).toBe('fail')
    dbUp = false
    await health.refresh()
    const fail = call(health.readiness)
    expect([fail.statusCode, fail.json.status]).toEqual([503, 'fail'])
  })

  it('calls checks without `this`, so unbound methods must be bound (db.check is)', async () => {
    let self: unknown = 'unset'
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: {
        db: function (this: unknown) {
          self = this
          return true
        },
      },
    })
    await health.refresh()
    expect(self).toBeUndefined()
  })

  it('emits status and check changes', async () => {
    let up = true
    const health = createHealth({ ...quiet, autoStart: false, checks: { db: async () => up } })
    const statuses: string[] = []
    const checks: string[] = []
    health.onStatusChange((c) => statuses.push(`${c.from}->${c.to}`))
    const sub = health.onCheckChange((c) => checks.push(`${c.name}:${c.from}->${c.to}`))
    await health.refresh()
    up = false
    await health.refresh()
    await health.refresh()
    sub.dispose()
    up = true
    await health.refresh()
    expect(statuses).toEqual(['fail->pass', 'pass->fail', 'fail->pass'])
    expect(checks).toEqual(['db:undefined->pass', 'db:pass->fail'])
  })
})

describe('readiness body: application/health+json (IETF draft)', () => {
  it('keys entries "<name>:<measurement>" with the draft fields', async () => {
    vi.setSystemTime(new Date('2026-01-02T03:04:05.000Z'))
    const health = createHealth({
      ...quiet,
      autoStart: false,
      serviceId: 'books',
      version: '1',
      checks: {
        postgres: {
          componentType: 'datastore',
          check: async () => [
            {
              status: 'pass',
              componentId: 'pg-1',
              measurement: 'replicationLag',
              observedValue: 0,
              observedUnit: 'bytes',
              details: { role: 'primary' },
            },
            {
              status: 'warn',
              componentId: 'pg-2',
              measurement: 'replicationLag',
              observedValue: 4096,
              observedUnit: 'bytes',
              output: 'lagging',
            },
          ],
        },
        redis: async () => true,
      },
    })
    await health.refresh()
    const r = call(health.readiness, '/ready')
    expect(r.headers).toMatchObject({
      'content-type': 'application/health+json',
      'cache-control': 'no-store',
      'content-length': Buffer.byteLength(r.body),
    })
    // The public route answers statuses only (below); the report has every draft field.
    expect(r.json).toEqual({
      status: 'warn',
      checks: { postgres: [{ status: 'warn' }], redis: [{ status: 'pass' }] },
    })
    expect(health.report()).toEqual({
      status: 'warn',
      serviceId: 'books',
      version: '1',
      checks: {
        'postgres:replicationLag': [
          {
            componentId: 'pg-1',
            componentType: 'datastore',
            status: 'pass',
            time: '2026-01-02T03:04:05.000Z',
            observedValue: 0,
            observedUnit: 'bytes',
          },
          {
            componentId: 'pg-2',
            componentType: 'datastore',
            status: 'warn',
            time: '2026-01-02T03:04:05.000Z',
            observedValue: 4096,
            observedUnit: 'bytes',
            output: 'lagging',
          },
        ],
        'redis:responseTime': [
          {
            componentId: 'redis',
            status: 'pass',
            time: '2026-01-02T03:04:05.000Z',
            observedValue: expect.any(Number),
            observedUnit: 'ms',
          },
        ],
      },
    })
  })

  it('the verbose view adds details, criticality and every breaker', async () => {
    const breaker = createBreaker({ name: 'readiness-test-breaker' })
    breaker.open()
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: { db: async () => ({ status: 'pass', details: { member: 'pg-1' } }) as CheckResult },
    })
    await health.refresh()
    const plain = call(health.readiness, '/ready')
    expect(plain.json).toEqual({ status: 'pass', checks: { db: [{ status: 'pass' }] } })
    const verbose = call(health.readiness, '/ready?verbose=1')
    expect(verbose.json.checks['db:responseTime'][0]).toMatchObject({
      critical: true,
      details: { member: 'pg-1' },
    })
    expect(verbose.json.breakers).toContainEqual(
      expect.objectContaining({ name: 'readiness-test-breaker', state: 'open' }),
    )
    const never = createHealth({ ...quiet, autoStart: false, verbose: false, checks: {} })
    expect(call(never.readiness, '/ready?verbose=1').json.breakers).toBeUndefined()
    breaker.shutdown()
  })

  it('a result that cannot be serialized never breaks the probe', async () => {
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    const health = createHealth({
      ...quiet,
      autoStart: false,
      checks: {
        db: async () =>
          ({ status: 'pass', details: cyclic, observedValue: { big: 1n } }) as unknown as CheckResult,
        odd: { check: async () => 42 as unknown as CheckResult, critical: false },
      },
    })
    await health.refresh()
    const r = call(health.readiness, '/ready?verbose=1')
    expect(r.statusCode).toBe(200)
    expect(r.json.checks['db:responseTime'][0].details).toEqual({ error: 'details are not serializable' })
    expect(r.json.checks['odd:responseTime'][0]).toMatchObject({
      status: 'fail',
      output: 'check returned number instead of a result',
    })
  })

  it('HEAD gets the status and headers without a body', async () => {
    const health = createHealth({ ...quiet, checks: {} })
    const r = call(health.readiness, '/ready', 'HEAD')
    expect(r.statusCode).toBe(200)
    expect(r.body).toBe('')
  })
})
