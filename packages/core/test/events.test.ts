import * as dc from 'node:diagnostics_channel'
import { channelNames, Emitter, toDisposable } from '@resilient/core'
import { describe, expect, it, vi } from 'vitest'

describe('Emitter', () => {
  it('delivers to every listener in order', () => {
    const e = new Emitter<number>()
    const seen: string[] = []
    e.on((n) => seen.push(`a${n}`))
    e.on((n) => seen.push(`b${n}`))
    e.emit(1)
    expect(seen).toEqual(['a1', 'b1'])
    expect(e.size).toBe(2)
  })

  it('isolates a throwing listener: the others still run, the error goes to onListenerError', () => {
    const errors: unknown[] = []
    const e = new Emitter<string>((err) => errors.push(err))
    const bug = new Error('listener bug')
    const after = vi.fn()
    e.on(() => {
      throw bug
    })
    e.on(after)
    expect(() => e.emit('x')).not.toThrow()
    expect(after).toHaveBeenCalledWith('x')
    expect(errors).toEqual([bug])
  })

  it('by default reports a listener error as a process warning and on its channel', () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {})
    const seen: unknown[] = []
    const sub = (m: unknown) => seen.push(m)
    dc.subscribe(channelNames.listenerError, sub)
    try {
      const e = new Emitter<void>()
      const bug = new Error('oops')
      e.on(() => {
        throw bug
      })
      e.emit()
      expect(warn).toHaveBeenCalledWith(expect.stringContaining('oops'), { code: 'RESILIENT_LISTENER_ERROR' })
      expect(seen).toEqual([{ error: bug }])
    } finally {
      dc.unsubscribe(channelNames.listenerError, sub)
      warn.mockRestore()
    }
  })

  it('dispose and Symbol.dispose remove the listener; disposing twice is harmless', () => {
    const e = new Emitter<number>()
    const fn = vi.fn()
    const d = e.on(fn)
    d.dispose()
    d.dispose()
    e.emit(1)
    expect(fn).not.toHaveBeenCalled()
    const fn2 = vi.fn()
    {
      const d2 = e.on(fn2)
      d2[Symbol.dispose]()
    }
    e.emit(2)
    expect(fn2).not.toHaveBeenCalled()
    expect(e.size).toBe(0)
  })

  it('once fires a single time; on works unbound', () => {
    const e = new Emitter<number>()
    const fn = vi.fn()
    const { once, on } = e
    once(fn)
    const all = vi.fn()
    on(all)
    e.emit(1)
    e.emit(2)
    expect(fn).toHaveBeenCalledTimes(1)
    expect(all).toHaveBeenCalledTimes(2)
  })

  it('a listener removed during emit still gets that event; one added during emit waits for the next', () => {
    const e = new Emitter<number>()
    const late = vi.fn()
    let d2: { dispose(): void } | undefined
    e.on(() => {
      d2?.dispose()
      e.on(late)
    })
    const second = vi.fn()
    d2 = e.on(second)
    e.emit(1)
    expect(second).toHaveBeenCalledTimes(1)
    expect(late).not.toHaveBeenCalled()
    e.emit(2)
    expect(second).toHaveBeenCalledTimes(1)
    expect(late).toHaveBeenCalledTimes(1)
  })

  it('rejects a non-function listener; clear removes all', () => {
    const e = new Emitter<number>()
    expect(() => e.on(42 as never)).toThrow(TypeError)
    e.on(() => {})
    e.clear()
    expect(e.size).toBe(0)
    const fn = vi.fn()
    toDisposable(fn).dispose()
    expect(fn).toHaveBeenCalledOnce()
  })
})
