import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { createBreaker } from '@resilient/core'
import { createHealth, createMetricsHandler } from '@resilient/health'
import { Registry } from 'prom-client'
import { afterEach, describe, expect, it, vi } from 'vitest'

let server: http.Server | undefined
afterEach(async () => {
  await new Promise((r) => (server ? server.close(r) : r(undefined)))
  server = undefined
  vi.doUnmock('prom-client')
  vi.resetModules()
})

async function scrape(
  handler: http.RequestListener,
): Promise<{ status: number; type: string | null; text: string }> {
  server = http.createServer(handler)
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r))
  const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`)
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() }
}

describe('metrics (prom-client, optional peer)', () => {
  it('exposes readiness, check states, check calls, breaker states and process metrics', async () => {
    const breaker = createBreaker({ name: 'metrics-test-breaker' })
    breaker.open()
    const health = createHealth({
      eventLoop: false,
      autoStart: false,
      checks: { db: async () => true, cache: { check: async () => false, critical: false } },
    })
    await health.refresh()
    const register = new Registry()
    const { status, type, text } = await scrape(await createMetricsHandler(health, { register }))
    expect(status).toBe(200)
    expect(type).toMatch(/^text\/plain/)
    expect(text).toContain('resilient_health_ready 1')
    expect(text).toContain('resilient_health_shutting_down 0')
    expect(text).toContain('resilient_health_check_up{check="db",critical="true"} 1')
    expect(text).toContain('resilient_health_check_up{check="cache",critical="false"} 0')
    expect(text).toContain('resilient_health_check_calls{check="db"} 1')
    expect(text).toContain('resilient_breaker_state{breaker="metrics-test-breaker",state="open"} 1')
    expect(text).toContain('resilient_breaker_state{breaker="metrics-test-breaker",state="closed"} 0')
    expect(text).toMatch(/^process_cpu_user_seconds_total /m)
    breaker.shutdown()
  })

  it('a second handler on the same registry takes the metrics over instead of throwing', async () => {
    const register = new Registry()
    const a = createHealth({ eventLoop: false, autoStart: false, checks: { a: async () => true } })
    const b = createHealth({ eventLoop: false, autoStart: false, checks: { b: async () => true } })
    await createMetricsHandler(a, { register, defaultMetrics: false })
    const { text } = await scrape(await createMetricsHandler(b, { register, defaultMetrics: false }))
    expect(text).toContain('resilient_health_check_calls{check="b"} 0')
    expect(text).not.toContain('check="a"')
    expect(text).not.toContain('process_cpu')
  })

  it('health.metrics answers 500 with a clear message when prom-client is missing', async () => {
    vi.doMock('prom-client', () => {
      throw new Error("Cannot find package 'prom-client'")
    })
    const { createHealth: fresh } = await import('@resilient/health')
    const health = fresh({ eventLoop: false, autoStart: false })
    const { status, text } = await scrape(health.metrics)
    expect(status).toBe(500)
    expect(text).toMatch(/E_CONFIG.*prom-client/)
  })
})
