import { type Cache, createCache } from '@resilient/cache'
import { ResilientError } from '@resilient/core'
import { type Command, Redis } from 'ioredis'
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { RedisClient } from '../src/client.js'
import { DeadlineGuard } from '../src/deadline.js'
import { decodeL2, encodeL2 } from '../src/entry.js'
import { KeyedMap } from '../src/keyed.js'
import { jsonSerializer } from '../src/serializer.js'

// The L2-hit path and the pieces it is built of: no server (an ioredis client whose
// sendCommand is answered in process), fake timers where time matters.

function stubClient(answer: (command: Command) => unknown, options: Record<string, unknown> = {}) {
  const client = new Redis({
    lazyConnect: true,
    enableOfflineQueue: false,
    commandTimeout: 100,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    ...options,
  })
  Object.defineProperty(client, 'status', { value: 'ready' })
  const sent: Command[] = []
  client.sendCommand = ((command: Command) => {
    sent.push(command)
    const reply = answer(command)
    if (reply !== NO_REPLY) command.resolve(reply)
    return command.promise
  }) as Redis['sendCommand']
  return { client, sent }
}
const NO_REPLY = Symbol('no reply')

function stored(value: unknown, ttlMs = 60_000): string {
  const now = Date.now()
  const payload = JSON.stringify(value)
  return encodeL2({ value, exp: now + ttlMs, hardExp: now + ttlMs * 2, tags: undefined, size: 0 }, payload)
}

let cache: Cache | undefined
afterEach(async () => {
  vi.useRealTimers()
  await cache?.close()
  cache = undefined
})

describe('L2 hit path', () => {
  it('is one MGET (value, generation) per call, and starts no timer per call', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] })
    const book = { id: 1, title: 'x' }
    const { client, sent } = stubClient(() => [stored(book), '7'])
    cache = createCache({ redis: client, namespace: 'ns', l1: false })
    const loader = vi.fn(async () => 'loaded')
    const before = vi.getTimerCount()
    for (let i = 0; i < 100; i++) expect(await cache.getOrLoad('book', loader)).toEqual(book)
    // the breaker's bucket rotation and the one deadline timer of the cache, nothing per call
    expect(vi.getTimerCount() - before).toBeLessThanOrEqual(1)
    expect(loader).not.toHaveBeenCalled()
    expect(sent).toHaveLength(100)
    expect(sent.every((c) => c.name === 'mget')).toBe(true)
    expect(sent[0]!.args).toEqual(['ns:{book}:v', 'ns:{book}:g'])
    expect(cache.stats()).toMatchObject({ hits: 100, hitsL2: 100, misses: 0, redisCommands: 100 })
  })

  it('a reply that is not an array is a decode error and a miss: the loader answers', async () => {
    const { client } = stubClient(() => 'OK')
    cache = createCache({ redis: client, namespace: 'ns', l1: false })
    expect(await cache.getOrLoad('k', async () => 'loaded')).toBe('loaded')
    expect(cache.stats()).toMatchObject({ decodeErrors: 1, misses: 1, loads: 1 })
  })

  it('a command Redis never answers is rejected at redisTimeoutMs with E_TIMEOUT, and the loader answers', async () => {
    vi.useFakeTimers({
      toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'],
    })
    const { client, sent } = stubClient((c) => (c.name === 'mget' ? NO_REPLY : 1))
    cache = createCache({ redis: client, namespace: 'ns', l1: false, redisTimeoutMs: 50 })
    const errors: unknown[] = []
    cache.onRedisError((e) => {
      if (e.operation === 'lookup') errors.push(e.error)
    })
    const p = cache.getOrLoad('k', async () => 'loaded')
    await vi.advanceTimersByTimeAsync(49)
    expect(cache.stats().loads).toBe(0)
    await vi.advanceTimersByTimeAsync(1)
    expect(await p).toBe('loaded')
    expect(ResilientError.is(errors[0], 'E_TIMEOUT')).toBe(true)
    await expect(sent[0]!.promise).rejects.toMatchObject({ code: 'E_TIMEOUT' })
    expect(cache.stats()).toMatchObject({ redisTimeouts: 1, loads: 1 })
  })

  it('a caller’s client that auto-pipelines keeps using client.mget(), so the read joins its pipeline', async () => {
    const book = { id: 2 }
    const { client, sent } = stubClient(() => [stored(book), null], { enableAutoPipelining: true })
    const mget = vi.spyOn(client, 'mget').mockImplementation((async () => [stored(book), null]) as never)
    cache = createCache({ redis: client, namespace: 'ns', l1: false })
    expect(await cache.getOrLoad('b', async () => 'loaded')).toEqual(book)
    expect(mget).toHaveBeenCalledTimes(1)
    expect(mget.mock.calls[0]![0]).toEqual(['ns:{b}:v', 'ns:{b}:g'])
    expect(sent).toHaveLength(0)
  })

  it('builds its MGET with the caller client’s key prefix, as client.mget() would', async () => {
    const { client, sent } = stubClient(() => [null, null], { keyPrefix: 'app:' })
    cache = createCache({ redis: client, namespace: 'ns', l1: false })
    await cache.get('k')
    expect(sent[0]!.args).toEqual(['app:ns:{k}:v', 'app:ns:{k}:g'])
  })
})

describe('DeadlineGuard', () => {
  const fakeClient = (sent: Command[]) =>
    ({
      sendCommand: (c: Command) => {
        sent.push(c)
        return c.promise
      },
    }) as unknown as RedisClient

  it('send(): rejects an unanswered command at its deadline through Command#reject, leaves answered ones alone', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] })
    const { Command: Cmd } = await import('ioredis')
    const guard = new DeadlineGuard(100)
    const sent: Command[] = []
    const client = fakeClient(sent)
    const answered = guard.send<string[]>(client, new Cmd('mget', ['a'], { replyEncoding: 'utf8' }), 'lookup')
    const hung = guard.send(client, new Cmd('mget', ['b'], { replyEncoding: 'utf8' }), 'lookup')
    const hungResult = hung.catch((e: unknown) => e)
    sent[0]!.resolve(['x'])
    expect(await answered).toEqual(['x'])
    await vi.advanceTimersByTimeAsync(99)
    expect(sent[1]!.isResolved).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    const err = await hungResult
    expect(ResilientError.is(err, 'E_TIMEOUT')).toBe(true)
    expect((err as ResilientError).message).toContain('lookup')
    expect(vi.getTimerCount()).toBe(0)
    guard.stop()
  })

  it('settled operations leave the queue at once (it holds what is in flight, not the last redisTimeoutMs)', async () => {
    const guard = new DeadlineGuard(60_000)
    for (let i = 0; i < 1_000; i++) await guard.run(async () => i, 'op')
    expect(guard.size).toBe(0)
    const { Command: Cmd } = await import('ioredis')
    const sent: Command[] = []
    for (let i = 0; i < 1_000; i++) {
      const p = guard.send(fakeClient(sent), new Cmd('get', ['k']), 'op')
      sent[i]!.resolve('v')
      await p
    }
    expect(guard.size).toBeLessThanOrEqual(1) // the last one leaves on the next send
    guard.stop()
  })
})

describe('KeyedMap', () => {
  it('behaves as a Map of string keys (its padding entry is invisible)', () => {
    const m = new KeyedMap<number>()
    expect(m.size).toBe(0)
    expect([...m]).toEqual([])
    m.set('a', 1)
    m.set('b', 2)
    m.set('a', 3)
    expect(m.get('a')).toBe(3)
    expect(m.size).toBe(2)
    expect([...m.entries()]).toEqual([
      ['a', 3],
      ['b', 2],
    ])
    expect([...m.values()]).toEqual([3, 2])
    expect(m.delete('a')).toBe(true)
    expect(m.delete('a')).toBe(false)
    expect(m.get('a')).toBeUndefined()
    m.clear()
    expect(m.size).toBe(0)
    expect([...m]).toEqual([])
    m.set('c', 4)
    expect([...m]).toEqual([['c', 4]])
  })
})

describe('decodeL2', () => {
  it('reads the expiry header in place and parses the payload once', () => {
    const parse = vi.spyOn(jsonSerializer, 'deserialize')
    try {
      const e = decodeL2('1700000000000:1700000060000:["t"]\n{"a":1}', jsonSerializer)
      expect(e).toEqual({ value: { a: 1 }, exp: 1700000000000, hardExp: 1700000060000, tags: ['t'], size: 7 })
      expect(parse).toHaveBeenCalledTimes(1)
    } finally {
      parse.mockRestore()
    }
  })

  it('falls back to Number() for a header that is not plain digits, and refuses what is not a number', () => {
    expect(decodeL2('1.5e3:2000:\n1', jsonSerializer)).toMatchObject({ exp: 1500, hardExp: 2000, value: 1 })
    expect(decodeL2('12x:2000:\n1', jsonSerializer)).toBeUndefined()
    expect(decodeL2('no header at all', jsonSerializer)).toBeUndefined()
    expect(decodeL2('1:2\n1', jsonSerializer)).toBeUndefined()
  })
})

describe('clients the cache creates', () => {
  it('neither the main client nor the subscriber has a per-command timer (the cache bounds their commands itself, after the poll phase)', async () => {
    const { createOwnedClient, createSubscriber } = await import('../src/client.js')
    const client = createOwnedClient({ host: '127.0.0.1', port: 1, retryStrategy: () => null }, 80) as Redis
    client.on('error', () => {})
    const sub = createSubscriber(client) as Redis
    sub.on('error', () => {})
    try {
      expect(client.options.commandTimeout).toBeUndefined()
      expect(client.options).toMatchObject({ enableOfflineQueue: false, maxRetriesPerRequest: 0 })
      expect(sub.options.commandTimeout).toBeUndefined()
      expect(sub.options).toMatchObject({ enableOfflineQueue: false, autoResubscribe: false })
    } finally {
      client.disconnect()
      sub.disconnect()
    }
  })
})
