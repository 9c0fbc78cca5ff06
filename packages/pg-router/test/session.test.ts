import { describe, expect, it } from 'vitest'
import {
  decodeToken,
  encodeToken,
  laterPosition,
  Session,
  type SessionHost,
  type WalPosition,
} from '../src/session.js'
import { formatLsn, parseLsn, parseTimeline, timelineOfWalFile } from '../src/topology.js'

describe('session tokens', () => {
  it('round-trips an LSN and its timeline through an opaque URL-safe string', () => {
    const lsn = parseLsn('16/B374D848')!
    const token = encodeToken({ lsn, timeline: 7 })
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/)
    const back = decodeToken(token)
    expect(back).toEqual({ ok: true, data: { lsn, timeline: 7 } })
    expect(formatLsn(lsn)).toBe('16/B374D848')
  })

  it('version 1 tokens (no timeline) still parse, with the timeline unknown', () => {
    const v1 = Buffer.from('{"v":1,"lsn":"0/3000060"}').toString('base64url')
    expect(decodeToken(v1)).toEqual({ ok: true, data: { lsn: 0x3000060n, timeline: null } })
  })

  it('WAL file names and timeline ids', () => {
    expect(timelineOfWalFile('00000003000000000000000A')).toBe(3)
    expect(timelineOfWalFile('0000000A000000000000000A')).toBe(10)
    expect(timelineOfWalFile('00000000000000000000000A')).toBeNull()
    expect(timelineOfWalFile('nope')).toBeNull()
    expect(parseTimeline(4)).toBe(4)
    expect(parseTimeline('4')).toBe(4)
    expect(parseTimeline(null)).toBeNull()
    expect(parseTimeline(0)).toBeNull()
  })

  it('laterPosition: newer timeline wins, unknown positions mean "primary", a known one replaces it', () => {
    const p = (lsn: bigint, timeline: number | null): WalPosition => ({ lsn, timeline })
    expect(laterPosition(null, p(5n, 1))).toEqual(p(5n, 1))
    expect(laterPosition(p(9n, 1), p(5n, 1))).toEqual(p(9n, 1)) // concurrent writes: the higher LSN
    expect(laterPosition(p(9n, 1), p(5n, 2))).toEqual(p(5n, 2)) // a write after a failover
    expect(laterPosition(p(5n, 2), p(9n, 1))).toEqual(p(5n, 2))
    expect(laterPosition(p(5n, 2), p(9n, null))).toEqual(p(9n, null)) // position unknown: primary
    expect(laterPosition(p(9n, null), p(5n, 2))).toEqual(p(5n, 2))
  })

  it.each([
    [undefined, 'not-a-string'],
    [42, 'not-a-string'],
    ['', 'bad-length'],
    ['x'.repeat(300), 'bad-length'],
    ['has spaces!', 'not-base64url'],
    [Buffer.from('{nope').toString('base64url'), 'not-json'],
    [Buffer.from('"str"').toString('base64url'), 'not-an-object'],
    [Buffer.from('{"v":3,"lsn":"0/1"}').toString('base64url'), 'unknown-version'],
    [Buffer.from('{"v":2,"lsn":"0/1","tl":"x"}').toString('base64url'), 'bad-timeline'],
    [Buffer.from('{"v":2,"lsn":"0/1","tl":0}').toString('base64url'), 'bad-timeline'],
    [Buffer.from('{"v":1,"lsn":"zz"}').toString('base64url'), 'bad-lsn'],
    [Buffer.from('{"v":1}').toString('base64url'), 'bad-lsn'],
  ])('rejects %o without throwing (%s)', (token, reason) => {
    expect(decodeToken(token)).toEqual({ ok: false, reason })
  })

  it('parseLsn / formatLsn', () => {
    expect(parseLsn('0/0')).toBe(0n)
    expect(parseLsn('1/0')).toBe(1n << 32n)
    expect(parseLsn('0/3000060')).toBe(0x3000060n)
    expect(parseLsn('0/3000060/1')).toBeNull()
    expect(parseLsn(null)).toBeNull()
    expect(formatLsn(0x3000060n)).toBe('0/3000060')
  })
})

describe('Session', () => {
  function fakeHost() {
    const seen: Array<WalPosition | null> = []
    let next = 100n
    const host: SessionHost = {
      readAfter: async (_t, _v, minLsn) => {
        seen.push(minLsn)
        return { rows: [], command: 'SELECT', rowCount: 0, oid: 0, fields: [] }
      },
      writeTracked: async (_t, _v, _o, onLsn) => {
        onLsn({ lsn: next, timeline: 1 })
        next -= 10n // a later write reporting an older position must not move the session back
        return { rows: [], command: 'INSERT', rowCount: 1, oid: 0, fields: [] }
      },
      transactionTracked: async (fn, _o, _min, onLsn) => {
        const r = await fn({
          query: async () => ({ rows: [], command: '', rowCount: 0, oid: 0, fields: [] }),
        })
        onLsn({ lsn: 500n, timeline: 1 })
        return r
      },
      reconcile: (pos) => pos,
      observed: () => {},
      encode: (pos) => encodeToken(pos),
    }
    return { host, seen }
  }

  it('starts empty, then reads after the highest LSN its writes reached', async () => {
    const { host, seen } = fakeHost()
    const s = new Session(host, null)
    expect(s.token).toBe('')
    expect(s.lsn).toBeNull()
    await s.read('SELECT 1')
    await s.write('INSERT 1')
    await s.write('INSERT 2')
    await s.read('SELECT 2')
    expect(seen).toEqual([null, { lsn: 100n, timeline: 1 }])
    expect(s.lsn).toBe('0/64')
    await s.transaction(async () => 1)
    await s.read('SELECT 3')
    expect(seen.at(-1)).toEqual({ lsn: 500n, timeline: 1 })
    expect(s.timeline).toBe(1)
    expect(decodeToken(s.token)).toEqual({ ok: true, data: { lsn: 500n, timeline: 1 } })
  })
})
