import { SingleFlight } from '@resilient/core'
import { describe, expect, it, vi } from 'vitest'

describe('SingleFlight', () => {
  it('runs one execution for concurrent callers of the same key', async () => {
    const sf = new SingleFlight<string, number>()
    let resolve!: (v: number) => void
    const fn = vi.fn(() => new Promise<number>((r) => (resolve = r)))
    const calls = Array.from({ length: 100 }, () => sf.do('k', fn))
    const other = sf.do('other', async () => 7)
    expect(fn).toHaveBeenCalledTimes(1)
    expect(sf.has('k')).toBe(true)
    expect(sf.size).toBe(2)
    resolve(42)
    expect(await Promise.all(calls)).toEqual(Array(100).fill(42))
    expect(await other).toBe(7)
  })

  it('releases the key once the execution settles', async () => {
    const sf = new SingleFlight<string, number>()
    const fn = vi.fn(async () => 1)
    await sf.do('k', fn)
    expect(sf.has('k')).toBe(false)
    await sf.do('k', fn)
    expect(fn).toHaveBeenCalledTimes(2)
  })

  it('shares an error with every waiter, then forgets it', async () => {
    const sf = new SingleFlight<string, number>()
    const err = new Error('loader failed')
    let reject!: (e: unknown) => void
    const fn = vi.fn(() => new Promise<number>((_, r) => (reject = r)))
    const a = sf.do('k', fn)
    const b = sf.do('k', fn)
    reject(err)
    await expect(a).rejects.toBe(err)
    await expect(b).rejects.toBe(err)
    expect(sf.size).toBe(0)
    await expect(sf.do('k', async () => 2)).resolves.toBe(2)
  })

  it('turns a synchronous throw into a rejection and keeps nothing', async () => {
    const sf = new SingleFlight<string, number>()
    await expect(
      sf.do('k', () => {
        throw new Error('sync')
      }),
    ).rejects.toThrow('sync')
    expect(sf.has('k')).toBe(false)
  })

  it('forget lets the next caller start a new execution without disturbing the old one', async () => {
    const sf = new SingleFlight<string, number>()
    let resolveOld!: (v: number) => void
    const old = sf.do('k', () => new Promise<number>((r) => (resolveOld = r)))
    sf.forget('k')
    const fresh = sf.do('k', async () => 2)
    resolveOld(1)
    expect(await old).toBe(1)
    expect(await fresh).toBe(2)
    expect(sf.size).toBe(0)
  })
})
