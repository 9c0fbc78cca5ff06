import {
  createBreaker,
  createRetry,
  metricNames,
  metrics,
  metricsSnapshot,
  resetMetricsSnapshot,
} from '@resilient/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

type Attrs = Record<string, unknown>
interface Recorded {
  name: string
  kind: string
  options: Record<string, unknown> | undefined
  values: { value: number; attrs: Attrs }[]
  callbacks: ((result: { observe(v: number, a?: Attrs): void }) => void)[]
}

/** A MeterProvider that remembers every instrument and measurement (no SDK needed). */
function fakeProvider() {
  const instruments = new Map<string, Recorded>()
  const make = (kind: string) => (name: string, options?: Record<string, unknown>) => {
    const inst: Recorded = { name, kind, options, values: [], callbacks: [] }
    instruments.set(name, inst)
    return {
      record: (value: number, attrs: Attrs = {}) => inst.values.push({ value, attrs }),
      add: (value: number, attrs: Attrs = {}) => inst.values.push({ value, attrs }),
      addCallback: (cb: Recorded['callbacks'][number]) => inst.callbacks.push(cb),
      removeCallback: () => {},
    }
  }
  const meter = {
    createHistogram: make('histogram'),
    createCounter: make('counter'),
    createUpDownCounter: make('updowncounter'),
    createGauge: make('gauge'),
    createObservableGauge: make('observable-gauge'),
    createObservableCounter: make('observable-counter'),
    createObservableUpDownCounter: make('observable-updowncounter'),
    addBatchObservableCallback: () => {},
    removeBatchObservableCallback: () => {},
  }
  const collect = (name: string) => {
    const out: { value: number; attrs: Attrs }[] = []
    for (const cb of instruments.get(name)?.callbacks ?? []) {
      cb({ observe: (value, attrs = {}) => out.push({ value, attrs }) })
    }
    return out
  }
  return { provider: { getMeter: () => meter }, instruments, collect }
}

let fake: ReturnType<typeof fakeProvider>
beforeEach(() => {
  fake = fakeProvider()
  metrics.setMeterProvider(fake.provider)
  resetMetricsSnapshot()
})
afterEach(() => {
  metrics.setMeterProvider(undefined)
})

describe('metrics with a MeterProvider', () => {
  it('finds @opentelemetry/api and reports active with a real provider only', () => {
    expect(metrics.available).toBe(true)
    expect(metrics.active).toBe(true)
    metrics.setMeterProvider(undefined) // the global one: no SDK registered here, so the no-op meter
    expect(metrics.active).toBe(false)
  })

  it('records db.client.operation.duration in seconds with semantic-convention attributes', () => {
    metrics.recordOperation({
      system: 'postgresql',
      operation: 'SELECT',
      namespace: 'app',
      durationSeconds: 0.002,
      serverAddress: '127.0.0.1',
      serverPort: 5432,
    })
    metrics.recordOperation({
      system: 'redis',
      operation: 'GET',
      durationSeconds: 0.5,
      errorType: 'E_TIMEOUT',
    })
    const h = fake.instruments.get(metricNames.operationDuration)!
    expect(h.kind).toBe('histogram')
    expect(h.options).toMatchObject({ unit: 's', advice: { explicitBucketBoundaries: expect.any(Array) } })
    expect(h.values).toEqual([
      {
        value: 0.002,
        attrs: {
          'db.system.name': 'postgresql',
          'db.operation.name': 'SELECT',
          'db.namespace': 'app',
          'server.address': '127.0.0.1',
          'server.port': 5432,
        },
      },
      {
        value: 0.5,
        attrs: { 'db.system.name': 'redis', 'db.operation.name': 'GET', 'error.type': 'E_TIMEOUT' },
      },
    ])
    expect(metricsSnapshot().operations).toEqual([
      { system: 'postgresql', operation: 'SELECT', count: 1, errors: 0, sumSeconds: 0.002 },
      { system: 'redis', operation: 'GET', count: 1, errors: 1, sumSeconds: 0.5 },
    ])
  })

  it('startOperation times one operation once and names its error by errorType', async () => {
    const ok = metrics.startOperation({ system: 'postgresql', operation: 'INSERT' })
    await new Promise((r) => setTimeout(r, 5))
    ok()
    ok() // a second call is ignored
    const failed = metrics.startOperation({ system: 'postgresql', operation: 'INSERT' })
    failed(Object.assign(new Error('boom'), { code: '40001' }))
    const values = fake.instruments.get(metricNames.operationDuration)!.values
    expect(values).toHaveLength(2)
    expect(values[0]!.value).toBeGreaterThan(0)
    expect(values[0]!.attrs['error.type']).toBeUndefined()
    expect(values[1]!.attrs['error.type']).toBe('40001')
    expect(metricsSnapshot().operations).toEqual([
      { system: 'postgresql', operation: 'INSERT', count: 2, errors: 1, sumSeconds: expect.any(Number) },
    ])
  })

  it('observeGauge: points read at each collection and in the snapshot; sources share a name; disposal stops one', () => {
    let a: { value: number; attributes?: Record<string, string> }[] = [{ value: 1, attributes: { k: 'a' } }]
    const first = metrics.observeGauge('test.gauge', { description: 'a test gauge', unit: '{x}' }, () => a)
    const second = metrics.observeGauge('test.gauge', { description: 'a test gauge' }, () => [
      { value: 2, attributes: { k: 'b' } },
    ])
    const broken = metrics.observeGauge('test.gauge', { description: 'a test gauge' }, () => {
      throw new Error('cannot report')
    })
    const g = fake.instruments.get('test.gauge')!
    expect(g.kind).toBe('observable-gauge')
    expect(g.options).toEqual({ description: 'a test gauge', unit: '{x}' })
    expect(fake.collect('test.gauge')).toEqual([
      { value: 1, attrs: { k: 'a' } },
      { value: 2, attrs: { k: 'b' } },
    ])
    a = []
    expect(fake.collect('test.gauge')).toEqual([{ value: 2, attrs: { k: 'b' } }])
    expect(metricsSnapshot().gauges).toEqual([{ name: 'test.gauge', value: 2, attributes: { k: 'b' } }])
    second.dispose()
    broken.dispose()
    expect(fake.collect('test.gauge')).toEqual([])
    first.dispose()
    // a provider set later gets the gauge too
    const late = fakeProvider()
    const again = metrics.observeGauge('test.gauge', { description: 'a test gauge' }, () => [{ value: 3 }])
    metrics.setMeterProvider(late.provider)
    expect(metrics.active).toBe(true)
    expect(late.collect('test.gauge')).toEqual([{ value: 3, attrs: {} }])
    again.dispose()
  })

  it('observes a pool: connection count by state, pending requests, max; disposal stops it', () => {
    let used = 3
    const d = metrics.observePool('pg1', () => ({ idle: 2, used, pending: 1, max: 10 }))
    expect(fake.collect(metricNames.connectionCount)).toEqual([
      { value: 2, attrs: { 'db.client.connection.pool.name': 'pg1', 'db.client.connection.state': 'idle' } },
      { value: 3, attrs: { 'db.client.connection.pool.name': 'pg1', 'db.client.connection.state': 'used' } },
    ])
    used = 5
    expect(fake.collect(metricNames.connectionCount)[1]!.value).toBe(5)
    expect(fake.collect(metricNames.connectionPendingRequests)).toEqual([
      { value: 1, attrs: { 'db.client.connection.pool.name': 'pg1' } },
    ])
    expect(fake.collect(metricNames.connectionMax)[0]!.value).toBe(10)
    expect(fake.collect(metricNames.connectionIdleMax)).toEqual([]) // not reported by this pool
    expect(metricsSnapshot().pools).toEqual([{ name: 'pg1', idle: 2, used: 5, pending: 1, max: 10 }])
    d.dispose()
    expect(fake.collect(metricNames.connectionCount)).toEqual([])
    expect(metricsSnapshot().pools).toEqual([])
  })

  it('a pool whose stats() throws is skipped, not fatal', () => {
    const d = metrics.observePool('broken', () => {
      throw new Error('closed')
    })
    expect(() => fake.collect(metricNames.connectionCount)).not.toThrow()
    expect(metricsSnapshot().pools).toEqual([])
    d.dispose()
  })

  it('records connection create/wait/use times and timeouts', () => {
    metrics.recordConnectionCreate('pg1', 0.01)
    metrics.recordConnectionWait('pg1', 0.002)
    metrics.recordConnectionUse('pg1', 0.05)
    metrics.recordConnectionTimeout('pg1')
    const pool = { 'db.client.connection.pool.name': 'pg1' }
    expect(fake.instruments.get(metricNames.connectionCreateTime)!.values).toEqual([
      { value: 0.01, attrs: pool },
    ])
    expect(fake.instruments.get(metricNames.connectionWaitTime)!.values).toEqual([
      { value: 0.002, attrs: pool },
    ])
    expect(fake.instruments.get(metricNames.connectionUseTime)!.values).toEqual([
      { value: 0.05, attrs: pool },
    ])
    expect(fake.instruments.get(metricNames.connectionTimeouts)!.values).toEqual([{ value: 1, attrs: pool }])
  })

  it('records breaker calls by kind, rejections as not_permitted, and state/failure rate as gauges', async () => {
    const b = createBreaker({ name: 'redis-m', volumeThreshold: 2, resetTimeoutMs: 60_000 })
    try {
      await b.execute(async () => 1)
      await b.execute(() => Promise.reject(new Error('x'))).catch(() => {})
      await b.execute(() => Promise.reject(new Error('x'))).catch(() => {})
      expect(b.state).toBe('open')
      await b.execute(async () => 1).catch(() => {})
      const calls = fake.instruments.get(metricNames.breakerCalls)!.values.map((v) => v.attrs)
      expect(calls).toEqual([
        { name: 'redis-m', kind: 'successful' },
        { name: 'redis-m', kind: 'failed' },
        { name: 'redis-m', kind: 'failed' },
      ])
      expect(fake.instruments.get(metricNames.breakerNotPermitted)!.values).toEqual([
        { value: 1, attrs: { name: 'redis-m', kind: 'not_permitted' } },
      ])
      const states = fake.collect(metricNames.breakerState).filter((o) => o.attrs.name === 'redis-m')
      expect(states).toEqual([
        { value: 0, attrs: { name: 'redis-m', state: 'closed' } },
        { value: 1, attrs: { name: 'redis-m', state: 'open' } },
        { value: 0, attrs: { name: 'redis-m', state: 'half_open' } },
      ])
      const rate = fake.collect(metricNames.breakerFailureRate).find((o) => o.attrs.name === 'redis-m')
      expect(rate!.value).toBeCloseTo(66.67, 1)
      expect(metricsSnapshot().breakers.find((s) => s.name === 'redis-m')).toMatchObject({
        state: 'open',
        successes: 1,
        failures: 2,
        rejects: 1,
      })
    } finally {
      b.shutdown()
    }
  })

  it('records retry outcomes with the Resilience4j kinds', async () => {
    const r = createRetry({ name: 'rt', maxAttempts: 2, baseDelayMs: 0 })
    await r.execute(async () => 1)
    await r.execute(async ({ attempt }) => {
      if (attempt === 1) throw new Error('x')
      return 1
    })
    await r.execute(async () => Promise.reject(new Error('x'))).catch(() => {})
    await createRetry({ name: 'rt', shouldRetry: () => false })
      .execute(async () => Promise.reject(new Error('x')))
      .catch(() => {})
    expect(fake.instruments.get(metricNames.retryCalls)!.values.map((v) => v.attrs.kind)).toEqual([
      'successful_without_retry',
      'successful_with_retry',
      'failed_with_retry',
      'failed_without_retry',
    ])
    expect(metricsSnapshot().retries.map((x) => [x.kind, x.count])).toEqual([
      ['successful_without_retry', 1],
      ['successful_with_retry', 1],
      ['failed_with_retry', 1],
      ['failed_without_retry', 1],
    ])
  })

  it('picks up a global MeterProvider registered after instruments were first made', async () => {
    const otel = await import('@opentelemetry/api')
    metrics.setMeterProvider(undefined)
    metrics.recordOperation({ system: 'redis', durationSeconds: 0.001 }) // made against the no-op meter
    expect(metrics.active).toBe(false)
    const late = fakeProvider()
    expect(otel.metrics.setGlobalMeterProvider(late.provider as never)).toBe(true)
    try {
      metrics.recordOperation({ system: 'redis', operation: 'GET', durationSeconds: 0.002 })
      expect(metrics.active).toBe(true)
      expect(late.instruments.get(metricNames.operationDuration)!.values).toHaveLength(1)
    } finally {
      otel.metrics.disable()
    }
    expect(metrics.active).toBe(false)
  })

  it('a provider that throws never breaks the caller', async () => {
    metrics.setMeterProvider({
      getMeter: () => {
        throw new Error('broken sdk')
      },
    })
    expect(() => metrics.recordOperation({ system: 'redis', durationSeconds: 0.1 })).not.toThrow()
    expect(metrics.active).toBe(false)
    const b = createBreaker({ name: 'with-broken-sdk' })
    await expect(b.execute(async () => 'ok')).resolves.toBe('ok')
    b.shutdown()
  })
})

describe('metrics without a MeterProvider', () => {
  it('are no-ops apart from the snapshot', async () => {
    metrics.setMeterProvider(undefined)
    metrics.recordOperation({ system: 'redis', operation: 'GET', durationSeconds: 0.001 })
    metrics.recordConnectionTimeout('p')
    expect(fake.instruments.size).toBe(0)
    expect(metricsSnapshot().operations).toHaveLength(1)
  })
})
