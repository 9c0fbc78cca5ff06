import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { ResilientError } from '@resilient/core'
import { createHealth } from '@resilient/health'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { call, deferred } from './helpers.js'

const base = { eventLoop: false as const, autoStart: false }

function get(port: number, agent: http.Agent, path = '/') {
  return new Promise<{ status: number; connection: string | undefined; body: string }>((resolve, reject) => {
    http
      .get({ port, path, agent }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => {
          body += d
        })
        res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection, body }))
      })
      .on('error', reject)
  })
}

const listen = (server: http.Server) =>
  new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)))

afterEach(() => {
  vi.restoreAllMocks()
})

describe('shutdown', () => {
  it('fails readiness at once, waits drainDelayMs, drains the server, then closes resources', async () => {
    const release = deferred()
    const server = http.createServer((req, res) => {
      if (req.url === '/slow') void release.promise.then(() => res.end('done'))
      else res.end('ok')
    })
    const port = await listen(server)
    const health = createHealth({ ...base, drainDelayMs: 100, shutdownTimeoutMs: 5_000, servers: [server] })
    const events: string[] = []
    health.onShutdownPhase((e) => events.push(e.phase))
    const closedDb = vi.fn()
    health.onShutdown('db', async () => {
      events.push('db.close')
      closedDb()
    })
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    expect((await get(port, agent)).connection).toBe('keep-alive')
    const slow = get(port, agent, '/slow') // in flight on the kept-alive connection
    await new Promise((r) => setTimeout(r, 20))

    const done = health.shutdown()
    expect(health.state).toBe('draining')
    expect(call(health.readiness).statusCode).toBe(503)
    expect(call(health.liveness).statusCode).toBe(200)
    await new Promise((r) => setTimeout(r, 150)) // past the drain delay: the server stopped accepting
    expect(server.listening).toBe(false)
    expect(closedDb).not.toHaveBeenCalled() // resources wait for the in-flight request
    release.resolve()
    const res = await slow
    expect(res).toEqual({ status: 200, connection: 'close', body: 'done' })
    const report = await done
    expect(report).toMatchObject({ clean: true, servers: [{ clean: true, inFlightAtClose: 1 }] })
    expect(report.resources).toEqual([{ name: 'db', ok: true, durationMs: expect.any(Number) }])
    expect(events).toEqual(['draining', 'closing-servers', 'closing-resources', 'db.close', 'closed'])
    expect(health.state).toBe('closed')
    await expect(get(port, new http.Agent())).rejects.toMatchObject({ code: 'ECONNREFUSED' })
    agent.destroy()
  })

  it('bounds resources by shutdownTimeoutMs and reports failures without stacks', async () => {
    const health = createHealth({
      ...base,
      drainDelayMs: 0,
      shutdownTimeoutMs: 100,
      resources: { hangs: () => new Promise(() => {}) },
    })
    health.onShutdown('throws', () => {
      throw new Error('pool already closed')
    })
    health.onShutdown('fine', () => undefined)
    const report = await health.shutdown()
    expect(report.clean).toBe(false)
    const byName = Object.fromEntries(report.resources.map((r) => [r.name, r]))
    expect(byName.hangs).toMatchObject({ ok: false, error: expect.stringMatching(/timed out/) })
    expect(byName.throws).toMatchObject({ ok: false, error: 'pool already closed' })
    expect(byName.fine).toMatchObject({ ok: true })
    expect(report.durationMs).toBeLessThan(5_000)
  })

  it('is idempotent and refuses late registrations with E_SHUTTING_DOWN', async () => {
    const check = vi.fn(async () => true)
    const health = createHealth({ ...base, drainDelayMs: 0, intervalMs: 10, checks: { db: check } })
    await health.refresh()
    const a = health.shutdown()
    expect(health.shutdown()).toBe(a)
    expect(() => health.onShutdown('late', () => {})).toThrowError(
      expect.objectContaining({ code: 'E_SHUTTING_DOWN' }),
    )
    await expect(health.refresh()).rejects.toSatisfy((e) => ResilientError.is(e, 'E_SHUTTING_DOWN'))
    await a
    expect(() => health.attachServer(http.createServer())).toThrowError(
      expect.objectContaining({ code: 'E_SHUTTING_DOWN' }),
    )
    const calls = check.mock.calls.length
    call(health.readiness)
    await new Promise((r) => setTimeout(r, 50))
    expect(check.mock.calls.length).toBe(calls) // no checks after shutdown
  })

  it('aborts a running check at shutdown', async () => {
    let signal: AbortSignal | undefined
    const health = createHealth({
      ...base,
      drainDelayMs: 0,
      timeoutMs: 60_000,
      checks: {
        db: (ctx) => {
          signal = ctx.signal
          return new Promise(() => {})
        },
      },
    })
    health.start()
    await new Promise((r) => setTimeout(r, 5))
    expect(signal?.aborted).toBe(false)
    await health.shutdown()
    expect(signal?.aborted).toBe(true)
  })

  it('handleSignals runs the shutdown on SIGTERM, exits 0 when clean, and a second signal exits 1', async () => {
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never)
    const before = process.listenerCount('SIGTERM')
    const health = createHealth({ ...base, drainDelayMs: 50 })
    const sub = health.handleSignals()
    try {
      process.emit('SIGTERM', 'SIGTERM')
      expect(health.isShuttingDown).toBe(true)
      expect(exit).not.toHaveBeenCalled()
      process.emit('SIGINT', 'SIGINT')
      expect(exit).toHaveBeenCalledWith(1)
      await health.shutdown()
      await new Promise((r) => setImmediate(r))
      expect(exit).toHaveBeenLastCalledWith(0)
    } finally {
      sub.dispose()
    }
    expect(process.listenerCount('SIGTERM')).toBe(before)
  })

  it('handleSignals({ exit: false }) only shuts down; dispose removes the listeners', async () => {
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never)
    const before = process.listeners('SIGTERM')
    const health = createHealth({
      ...base,
      drainDelayMs: 0,
      handleSignals: { exit: false, signals: ['SIGTERM'] },
    })
    const added = process.listeners('SIGTERM').filter((l) => !before.includes(l))
    expect(added).toHaveLength(1)
    process.emit('SIGTERM', 'SIGTERM')
    const report = await health.shutdown()
    expect(report.reason).toBe('SIGTERM')
    await new Promise((r) => setImmediate(r))
    expect(exit).not.toHaveBeenCalled()
    const other = createHealth({ ...base })
    other.handleSignals({ exit: false }).dispose()
    expect(process.listenerCount('SIGTERM')).toBe(before.length + 1)
    process.removeListener('SIGTERM', added[0]!)
  })
})
