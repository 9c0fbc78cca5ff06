import { inspect } from 'node:util'
import { ResilientError } from '@resilient/core'
import { describe, expect, it } from 'vitest'
import { DEFAULT_PG_ROUTER_OPTIONS, resolveOptions } from '../src/options.js'

const SECRET = 'hunter2-do-not-print'
const patroni = { endpoints: ['http://127.0.0.1:8008'] }

function configError(options: unknown): ResilientError {
  try {
    resolveOptions(options)
  } catch (err) {
    if (ResilientError.is(err, 'E_CONFIG')) return err
    throw err
  }
  throw new Error('expected E_CONFIG')
}

describe('resolveOptions', () => {
  it('fills the documented defaults', () => {
    const o = resolveOptions({ patroni })
    expect(o.pool).toEqual(DEFAULT_PG_ROUTER_OPTIONS.pool)
    expect(o.replicas).toEqual(DEFAULT_PG_ROUTER_OPTIONS.replicas)
    expect(o.failover).toEqual(DEFAULT_PG_ROUTER_OPTIONS.failover)
    expect(o.monitor).toEqual(DEFAULT_PG_ROUTER_OPTIONS.monitor)
    expect(o.session).toEqual(DEFAULT_PG_ROUTER_OPTIONS.session)
    expect(o.source.kind).toBe('patroni')
  })

  it.each([
    [{ patroni, replicas: { maxLagBytes: -1 } }, 'replicas.maxLagBytes'],
    [{ patroni, replicas: { maxLagBytes: 1.5 } }, 'replicas.maxLagBytes'],
    [{ patroni, replicas: { fallbackToPrimary: 'yes' } }, 'replicas.fallbackToPrimary'],
    [{ patroni, replicas: { strategy: 'random' } }, 'replicas.strategy'],
    [{ patroni, replicas: { lag: 1 } }, 'replicas.lag'],
    [{ patroni, pool: { max: 0 } }, 'pool.max'],
    [{ patroni, pool: { connectTimeoutMs: Number.NaN } }, 'pool.connectTimeoutMs'],
    [{ patroni, pool: 5 }, 'pool'],
    [{ patroni, failover: { timeoutMs: 0 } }, 'failover.timeoutMs'],
    [{ patroni, failover: { maxQueue: -1 } }, 'failover.maxQueue'],
    [{ patroni, monitor: { fastIntervalMs: 1 } }, 'monitor.fastIntervalMs'],
    [{ patroni, session: { maxWaitMs: -5 } }, 'session.maxWaitMs'],
    [{ patroni, connection: { host: 'db' } }, 'connection.host'],
    [{ patroni, connection: { connectionString: 'postgres://x' } }, 'connection.connectionString'],
    [{ patroni, connection: { user: 5 } }, 'connection.user'],
    [{ hosts: [] }, 'hosts'],
    [{ hosts: [{ host: '' }] }, 'hosts[0].host'],
    [{ hosts: [{ host: 'a' }, { host: 'b', port: 0 }] }, 'hosts[1].port'],
    [{ hosts: [{ host: 'a', user: 'x' }] }, 'hosts[0].user'],
    [{ discovery: { discover: 1 } }, 'discovery'],
    [{}, 'patroni'],
    [{ patroni, hosts: [{ host: 'a' }] }, 'patroni/hosts'],
    [{ patroni, nope: true }, 'nope'],
    [undefined, 'options'],
  ])('%o -> E_CONFIG naming %s', (options, field) => {
    const err = configError(options)
    expect(err.message).toContain(field)
    expect(err.details.field).toBe(field)
  })

  it('never echoes a string value (a password in the wrong field stays secret)', () => {
    for (const options of [
      { patroni, replicas: { strategy: SECRET } },
      { patroni, pool: { max: SECRET } },
      { patroni, connection: { user: 1, password: SECRET } },
      { patroni, connection: { password: SECRET, host: SECRET } },
    ]) {
      const err = configError(options)
      expect(err.message).not.toContain(SECRET)
      expect(inspect(err, { depth: 10 })).not.toContain(SECRET)
    }
  })

  it('keeps the password usable but out of inspect, JSON and spreads', () => {
    const input = { patroni, connection: { user: 'u', password: SECRET, database: 'd' } }
    const o = resolveOptions(input)
    expect(o.connection.password).toBe(SECRET)
    expect(inspect(o, { depth: 10 })).not.toContain(SECRET)
    expect(JSON.stringify(o)).not.toContain(SECRET)
    expect({ ...o.connection }).not.toHaveProperty('password')
    // the caller's object is not modified
    expect(Object.keys(input.connection)).toContain('password')
  })

  it('accepts a password function (rotating credentials)', () => {
    const o = resolveOptions({ patroni, connection: { password: async () => SECRET } })
    expect(typeof o.connection.password).toBe('function')
  })
})
