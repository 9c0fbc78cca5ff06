import type { AddressInfo } from 'node:net'
import * as net from 'node:net'
import { inspect } from 'node:util'
import { ResilientError } from '@resilient/core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createStaticDiscovery, parseLsn } from '../src/discovery/static.js'
import type { DiscoveryErrorEvent } from '../src/discovery/types.js'

const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)
beforeAll(() => process.on('unhandledRejection', onUnhandled))
afterAll(() => {
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as AddressInfo).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

/** Accepts TCP connections and never says a word (a hung server). */
async function silentServer(): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<net.Socket>()
  const s = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('error', () => {})
  })
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return {
    port: (s.address() as AddressInfo).port,
    close: () => {
      for (const x of sockets) x.destroy()
      s.close()
    },
  }
}

/** Answers the startup packet with garbage bytes. */
async function garbageServer(): Promise<{ port: number; close: () => void }> {
  const s = net.createServer((sock) => {
    sock.on('error', () => {})
    sock.once('data', () => sock.end(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')))
  })
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return { port: (s.address() as AddressInfo).port, close: () => s.close() }
}

describe('static discovery without a server', () => {
  it('parses LSNs', () => {
    expect(parseLsn('0/0')).toBe(0n)
    expect(parseLsn('16/B374D848')).toBe((0x16n << 32n) + 0xb374d848n)
    expect(parseLsn(null)).toBeNull()
    expect(parseLsn('16-B374D848')).toBeNull()
  })

  it('refused, hung and garbage-speaking hosts: an event each, unknown/unreachable, then E_DISCOVERY', async () => {
    const refused = await freePort()
    const hung = await silentServer()
    const garbage = await garbageServer()
    const password = 'pw-very-Secret-123'
    const d = createStaticDiscovery({
      hosts: [
        { host: '127.0.0.1', port: refused },
        { host: '127.0.0.1', port: hung.port },
        { host: '127.0.0.1', port: garbage.port },
      ],
      connection: { user: 'u', password, database: 'db' },
      timeoutMs: 300,
    })
    const events: DiscoveryErrorEvent[] = []
    d.onError((e) => events.push(e))
    try {
      const err = (await d.discover().catch((e: unknown) => e)) as ResilientError
      expect(ResilientError.is(err, 'E_DISCOVERY')).toBe(true)
      expect(err.message).toMatch(/3 tried/)
      expect(events.map((e) => e.source).sort()).toEqual(
        [refused, hung.port, garbage.port].map((p) => `127.0.0.1:${p}`).sort(),
      )
      const byPort = (p: number) => events.find((e) => e.source === `127.0.0.1:${p}`)!.error
      expect(byPort(refused).message).toMatch(/ECONNREFUSED/)
      expect(byPort(hung.port).message).toMatch(/timeout|timed out/i)
      for (const e of events) expect(ResilientError.is(e.error, 'E_DISCOVERY')).toBe(true)
      for (const text of [
        inspect(d, { showHidden: true, depth: 10 }),
        inspect(err, { depth: 10 }),
        inspect(events, { depth: 10 }),
      ]) {
        expect(text).not.toContain(password)
      }
    } finally {
      await d.close()
      hung.close()
      garbage.close()
    }
  })

  it('honors an aborted signal and close()', async () => {
    const hung = await silentServer()
    const d = createStaticDiscovery({ hosts: [{ host: '127.0.0.1', port: hung.port }], timeoutMs: 60_000 })
    try {
      const ac = new AbortController()
      ac.abort()
      expect(ResilientError.is(await d.discover(ac.signal).catch((e: unknown) => e), 'E_ABORTED')).toBe(true)
      const ac2 = new AbortController()
      const p = d.discover(ac2.signal)
      setTimeout(() => ac2.abort(), 20)
      expect(ResilientError.is(await p.catch((e: unknown) => e), 'E_ABORTED')).toBe(true)
    } finally {
      await d.close()
      hung.close()
    }
    expect(ResilientError.is(await d.discover().catch((e: unknown) => e), 'E_SHUTTING_DOWN')).toBe(true)
  })

  it('concurrent polls share one probe per host', async () => {
    let connections = 0
    const s = net.createServer((sock) => {
      connections++
      sock.on('error', () => {})
    })
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
    const port = (s.address() as AddressInfo).port
    const d = createStaticDiscovery({ hosts: [{ host: '127.0.0.1', port }], timeoutMs: 200 })
    try {
      const results = await Promise.allSettled([d.discover(), d.discover(), d.discover()])
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected'])
      expect(connections).toBe(1)
    } finally {
      await d.close()
      s.close()
    }
  })

  const bad: [string, unknown, RegExp][] = [
    ['no options', undefined, /options: expected an object/],
    ['no hosts', {}, /hosts: expected a non-empty array/],
    ['a host without host', { hosts: [{ host: 'a' }, { port: 1 }] }, /hosts\[1\]\.host/],
    ['a bad port', { hosts: [{ host: 'a', port: 70000 }] }, /hosts\[0\]\.port/],
    ['a typo', { hosts: [{ host: 'a', prot: 1 }] }, /unknown option hosts\[0\]\.prot/],
    [
      'a duplicate',
      { hosts: [{ host: 'a' }, { host: 'a', port: 5432 }] },
      /hosts\[1\]: expected no duplicate/,
    ],
    ['connection.host', { hosts: [{ host: 'a' }], connection: { host: 'b' } }, /connection\.host/],
    [
      'connection.connectionString',
      { hosts: [{ host: 'a' }], connection: { connectionString: 'postgres://u:SECRET@x/db' } },
      /connection\.connectionString/,
    ],
    [
      'connection.password a number',
      { hosts: [{ host: 'a' }], connection: { password: 5 } },
      /connection\.password/,
    ],
    ['timeoutMs', { hosts: [{ host: 'a' }], timeoutMs: -1 }, /timeoutMs/],
  ]
  it.each(bad)('%s -> E_CONFIG naming the field', (_n, options, message) => {
    let err: unknown
    try {
      createStaticDiscovery(options as never)
    } catch (e) {
      err = e
    }
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    expect((err as Error).message).toMatch(message)
    expect(inspect(err, { depth: 10 })).not.toContain('SECRET')
  })
})
