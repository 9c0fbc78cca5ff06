import { inspect } from 'node:util'
import { ResilientError } from '@resilient/core'
import { createHealth, DEFAULT_HEALTH_OPTIONS, type HealthOptions } from '@resilient/health'
import { describe, expect, it } from 'vitest'

function configField(options: unknown): string | undefined {
  try {
    createHealth(options as HealthOptions)
  } catch (err) {
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    return (err as ResilientError).details.field as string
  }
  return undefined
}

describe('options', () => {
  it('exports its defaults', () => {
    expect(DEFAULT_HEALTH_OPTIONS).toMatchObject({
      intervalMs: 2_000,
      timeoutMs: 500,
      drainDelayMs: 5_000,
      shutdownTimeoutMs: 10_000,
      readyBeforeFirstCheck: false,
      verbose: false,
      handleSignals: false,
      autoStart: true,
    })
  })

  it.each([
    [{ intervalMs: 0 }, 'health.intervalMs'],
    [{ timeoutMs: '5' }, 'health.timeoutMs'],
    [{ drainDelayMs: -1 }, 'health.drainDelayMs'],
    [{ shutdownTimeoutMs: Number.NaN }, 'health.shutdownTimeoutMs'],
    [{ intervalMz: 5 }, 'health.intervalMz'],
    [{ checks: [] }, 'health.checks'],
    [{ checks: { db: { check: 'nope' } } }, 'health.checks.db.check'],
    [{ checks: { db: { check: () => true, critcal: false } } }, 'health.checks.db.critcal'],
    [{ checks: { db: { check: () => true, critical: 'yes' } } }, 'health.checks.db.critical'],
    [{ checks: { db: { check: () => true, timeoutMs: 0 } } }, 'health.checks.db.timeoutMs'],
    [{ checks: { 'db:x': () => true } }, 'health.checks.db:x'],
    [{ eventLoop: { maxDelayMs: 0 } }, 'health.eventLoop.maxDelayMs'],
    [{ eventLoop: true }, 'health.eventLoop'],
    [{ verbose: 'yes' }, 'health.verbose'],
    [{ verbose: { token: 'short' } }, 'health.verbose.token'],
    [{ verbose: { token: ['a-long-enough-token', 5] } }, 'health.verbose.token[1]'],
    [{ verbose: { token: [] } }, 'health.verbose.token'],
    [{ verbose: { tokn: 'a-long-enough-token' } }, 'health.verbose.tokn'],
    [{ servers: [{}] }, 'health.servers[0]'],
    [{ resources: { db: 'close' } }, 'health.resources.db'],
    [{ handleSignals: { signals: ['SIGKILL'] } }, 'health.handleSignals.signals[0]'],
    [{ handleSignals: { exit: 'no' } }, 'health.handleSignals.exit'],
    [{ serviceId: 5 }, 'health.serviceId'],
  ] as [unknown, string][])('%o throws E_CONFIG naming %s', (options, field) => {
    expect(configField({ eventLoop: false, autoStart: false, ...(options as object) })).toBe(field)
  })

  it('never echoes a string value in the message', () => {
    try {
      createHealth({ timeoutMs: 'postgres://u:hunter2@db' as unknown as number })
      expect.unreachable()
    } catch (err) {
      expect((err as Error).message).not.toContain('hunter2')
      expect(inspect(err)).not.toContain('hunter2')
    }
  })

  it('onShutdown checks its arguments', () => {
    const health = createHealth({ eventLoop: false, autoStart: false })
    expect(() => health.onShutdown('', () => {})).toThrow(/onShutdown.name/)
    expect(() => health.onShutdown('db', 'x' as unknown as () => void)).toThrow(/onShutdown.close/)
    expect(() => health.attachServer({} as never)).toThrow(/server/)
  })
})
