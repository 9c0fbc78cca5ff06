import * as dc from 'node:diagnostics_channel'
import { inspect } from 'node:util'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { channelNames } from '../src/channels.js'
import { resolveOptions } from '../src/options.js'
import { encodeToken, Session, type SessionHost, type WalPosition } from '../src/session.js'
import { type ClusterView, SessionTokens, UNCHECKED } from '../src/session-tokens.js'

const SECRET = 'a-secret-of-thirty-two-characters'
const OLD_SECRET = 'the-previous-secret-key-rotated!'

/** The cluster as the monitor would see it; `refreshWriter` moves `lsn` to `next` after `pollMs`. */
function view(
  over: Partial<{
    tl: number | null
    lsn: bigint | null
    next: bigint | null
    pollMs: number
    ends: Map<number, bigint> | null
  }> = {},
) {
  const v = {
    tl: 3 as number | null,
    lsn: 1000n as bigint | null,
    next: null as bigint | null,
    pollMs: 1,
    ends: null as Map<number, bigint> | null,
    polls: 0,
    ...over,
  }
  const cv: ClusterView = {
    get primaryTimeline() {
      return v.tl
    },
    primaryLsn: () => v.lsn,
    timelineEnd: (tl) => (v.ends === null ? undefined : (v.ends.get(tl) ?? null)),
    refreshWriter: () =>
      new Promise<void>((resolve) => {
        v.polls++
        setTimeout(() => {
          if (v.next !== null) v.lsn = v.next
          resolve()
        }, v.pollMs)
      }),
  }
  return { v, cv }
}

const badTokens: unknown[] = []
const onBad = (m: unknown) => badTokens.push(m)
beforeEach(() => dc.subscribe(channelNames.badToken, onBad))
afterEach(() => {
  dc.unsubscribe(channelNames.badToken, onBad)
  badTokens.length = 0
})

describe('signed tokens', () => {
  it('round trip; the first secret signs, any verifies (rotation)', () => {
    const { cv } = view()
    const signer = new SessionTokens([SECRET, OLD_SECRET], cv, 100)
    const token = signer.encode({ lsn: 0x3000060n, timeline: 3 })
    expect(token).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/)
    expect(token.split('.')[0]).toBe(encodeToken({ lsn: 0x3000060n, timeline: 3 }))
    expect(signer.open(token)).toEqual({ pos: { lsn: 0x3000060n, timeline: 3 }, trusted: true })
    // a token signed with the previous secret still verifies while it is listed
    const old = new SessionTokens(OLD_SECRET, cv, 100).encode({ lsn: 5n, timeline: 3 })
    expect(signer.open(old)?.trusted).toBe(true)
    // once dropped, it does not
    expect(new SessionTokens(SECRET, cv, 100).open(old)).toBeNull()
  })

  it.each([
    ['unsigned', () => encodeToken({ lsn: 5n, timeline: 3 })],
    [
      'signed with another key',
      () => new SessionTokens('another-secret-key-16+', view().cv, 1).encode({ lsn: 5n, timeline: 3 }),
    ],
    [
      'a forged payload under a real signature',
      () => {
        const real = new SessionTokens(SECRET, view().cv, 1).encode({ lsn: 5n, timeline: 3 })
        return `${encodeToken({ lsn: 0xffffffffn << 32n, timeline: 3 })}.${real.split('.')[1]}`
      },
    ],
    [
      'a truncated signature',
      () => new SessionTokens(SECRET, view().cv, 1).encode({ lsn: 5n, timeline: 3 }).slice(0, -3),
    ],
    ['an empty signature', () => `${encodeToken({ lsn: 5n, timeline: 3 })}.`],
  ])('with a secret, a token %s is ignored and counted as badSignature', (_name, make) => {
    const t = new SessionTokens(SECRET, view().cv, 100)
    expect(t.open(make())).toBeNull()
    expect(t.stats.badSignature).toBe(1)
    expect(t.ignored).toBe(1)
    expect(badTokens).toEqual([{ reason: 'signature' }])
  })

  it('without a secret, a signature is not checked and the position is not trusted', () => {
    const signed = new SessionTokens(SECRET, view().cv, 1).encode({ lsn: 5n, timeline: 3 })
    expect(new SessionTokens(undefined, view().cv, 1).open(signed)).toEqual({
      pos: { lsn: 5n, timeline: 3 },
      trusted: false,
    })
  })

  it.each([
    ['truncated', (t: string) => t.slice(0, 7)],
    ['two dots', (t: string) => `${t}.x`],
    ['too long', (t: string) => `${t}${'A'.repeat(300)}`],
    ['not a string', () => 42],
  ])('a %s token is malformed: ignored, counted', (_name, mangle) => {
    const t = new SessionTokens(SECRET, view().cv, 100)
    expect(t.open(mangle(t.encode({ lsn: 5n, timeline: 3 })))).toBeNull()
    expect(t.stats.malformed + t.stats.badSignature).toBe(1)
  })

  it('the secret never shows in inspect, stats or channel messages', () => {
    const t = new SessionTokens(SECRET, view().cv, 100)
    t.open('garbage!')
    t.open(encodeToken({ lsn: 5n, timeline: 3 }))
    const shown = [
      inspect(t, { showHidden: true, depth: 5 }),
      JSON.stringify(t.stats),
      JSON.stringify(badTokens),
    ]
    for (const text of shown) expect(text).not.toContain(SECRET)
    const o = resolveOptions({ hosts: [{ host: 'h' }], session: { secret: [SECRET, OLD_SECRET] } })
    expect(o.session.secret).toEqual([SECRET, OLD_SECRET])
    const dumped = `${inspect(o, { depth: 10 })}${JSON.stringify(o)}${JSON.stringify({ ...o.session })}`
    expect(dumped).not.toContain(SECRET)
    expect(dumped).not.toContain(OLD_SECRET)
  })

  it.each([
    [{ secret: 'short' }, 'session.secret'],
    [{ secret: [] }, 'session.secret'],
    [{ secret: [SECRET, 'short'] }, 'session.secret[1]'],
    [{ secret: [SECRET, 42] }, 'session.secret[1]'],
    [{ secret: 42 }, 'session.secret'],
  ])('bad session.secret %o -> E_CONFIG naming %s, never echoing it', (session, field) => {
    let err: unknown
    try {
      resolveOptions({ hosts: [{ host: 'h' }], session })
    } catch (e) {
      err = e
    }
    expect(err).toMatchObject({ code: 'E_CONFIG', details: { field } })
    expect((err as Error).message).not.toContain('short')
    expect((err as Error).message).not.toContain(SECRET)
  })
})

describe('positions reconciled with the cluster', () => {
  const at = (lsn: bigint, timeline: number | null): WalPosition => ({ lsn, timeline })

  it('a trusted position on the primary timeline is used as is (the same object: no allocation)', () => {
    const t = new SessionTokens(undefined, view().cv, 100)
    const p = at(5000n, 3) // beyond the last poll: our own write, trusted
    expect(t.reconcile(p, true)).toBe(p)
  })

  it('an untrusted position within the primary position is checked at once (a new object: trust it from now on)', () => {
    const t = new SessionTokens(undefined, view().cv, 100)
    const p = at(900n, 3)
    const r = t.reconcile(p, false)
    expect(r).toEqual(p)
    expect(r).not.toBe(p)
  })

  it('an untrusted position beyond the last poll: the primary is polled; still beyond -> ignored as ahead', async () => {
    const { v, cv } = view({ next: 1100n })
    const t = new SessionTokens(undefined, cv, 100)
    expect(await t.reconcile(at(0xffffffffn << 32n, 3), false)).toBeNull()
    expect(v.polls).toBe(1)
    expect(t.stats.aheadOfPrimary).toBe(1)
    expect(badTokens).toEqual([{ reason: 'ahead' }])
    // a legit token from another process, written after our last poll: the poll confirms it
    expect(await t.reconcile(at(1050n, 3), false)).toEqual(at(1050n, 3))
  })

  it('a position this router saw its own write reach needs no poll', () => {
    const { v, cv } = view()
    const t = new SessionTokens(undefined, cv, 100)
    t.observed(at(2000n, 3))
    expect(t.reconcile(at(1500n, 3), false)).toEqual(at(1500n, 3))
    expect(v.polls).toBe(0)
  })

  it('a poll slower than session.maxWaitMs: this read goes to the primary unchecked, within maxWaitMs', async () => {
    const { cv } = view({ pollMs: 5_000 })
    const t = new SessionTokens(undefined, cv, 50)
    const t0 = performance.now()
    expect(await t.reconcile(at(5000n, 3), false)).toBe(UNCHECKED)
    expect(performance.now() - t0).toBeLessThan(1_000)
  })

  it('a timeline the cluster has not reached (after a poll): ignored', async () => {
    const t = new SessionTokens(undefined, view().cv, 100)
    expect(await t.reconcile(at(10n, 9), true)).toBeNull()
    expect(t.stats.unknownTimeline).toBe(1)
    expect(badTokens).toEqual([{ reason: 'timeline' }])
  })

  it('an earlier timeline: moved onto the primary timeline when its position is in the history, else lost', async () => {
    const ends = new Map([
      [1, 500n],
      [2, 800n],
    ])
    const t = new SessionTokens(undefined, view({ ends }).cv, 100)
    expect(t.reconcile(at(700n, 2), true)).toEqual(at(700n, 3))
    expect(t.reconcile(at(500n, 1), true)).toEqual(at(500n, 3))
    expect(t.stats.rebased).toBe(2)
    expect(t.reconcile(at(801n, 2), true)).toBeNull() // written on timeline 2 after it ended: gone
    expect(t.stats.lostInFailover).toBe(1)
    // history unknown: moved all the same (any member past it is as good as another)
    const u = new SessionTokens(undefined, view().cv, 100)
    expect(u.reconcile(at(700n, 2), true)).toEqual(at(700n, 3))
    // untrusted and moved: still checked against the primary's position
    expect(await u.reconcile(at(5000n, 2), false)).toBeNull()
    expect(u.stats.aheadOfPrimary).toBe(1)
  })

  it('nothing known yet (no primary): the position is kept as is, unchecked', () => {
    const t = new SessionTokens(undefined, view({ tl: null, lsn: null }).cv, 100)
    const p = at(5n, 3)
    expect(t.reconcile(p, false)).toBe(p)
  })
})

describe('Session with reconciliation', () => {
  function host(tokens: SessionTokens) {
    const mins: Array<WalPosition | null> = []
    const h: SessionHost = {
      readAfter: async (_t, _v, min) => {
        mins.push(min)
        return { rows: [], command: 'SELECT', rowCount: 0, oid: 0, fields: [] }
      },
      writeTracked: async (_t, _v, _o, on) => {
        on({ lsn: 1200n, timeline: 3 })
        return { rows: [], command: 'INSERT', rowCount: 1, oid: 0, fields: [] }
      },
      transactionTracked: async (fn) =>
        fn({ query: async () => ({ rows: [], command: '', rowCount: 0, oid: 0, fields: [] }) }),
      reconcile: (pos, trusted) => tokens.reconcile(pos, trusted),
      observed: (pos) => tokens.observed(pos),
      encode: (pos) => tokens.encode(pos),
    }
    return { h, mins }
  }

  it('a far-future token: the first read polls once and reads as a plain read; the session forgets it', async () => {
    const { v, cv } = view()
    const tokens = new SessionTokens(undefined, cv, 100)
    const { h, mins } = host(tokens)
    const opened = tokens.open(encodeToken({ lsn: 0xffffffffn << 32n, timeline: 3 }))!
    const s = new Session(h, opened.pos, opened.trusted)
    await s.read('SELECT 1')
    await s.read('SELECT 2')
    expect(mins).toEqual([null, null])
    expect(v.polls).toBe(1)
    expect(s.token).toBe('')
    // its own write: trusted, no poll, signed when a secret is set
    await s.write('INSERT 1')
    await s.read('SELECT 3')
    expect(mins.at(-1)).toEqual({ lsn: 1200n, timeline: 3 })
    expect(v.polls).toBe(1)
  })

  it('a checked token is trusted from then on (one check per session)', async () => {
    const { v, cv } = view({ next: 2000n })
    const tokens = new SessionTokens(undefined, cv, 100)
    const { h, mins } = host(tokens)
    const opened = tokens.open(encodeToken({ lsn: 1500n, timeline: 3 }))!
    const s = new Session(h, opened.pos, opened.trusted)
    await s.read('SELECT 1')
    await s.read('SELECT 2')
    expect(mins).toEqual([
      { lsn: 1500n, timeline: 3 },
      { lsn: 1500n, timeline: 3 },
    ])
    expect(v.polls).toBe(1)
  })

  it('the token getter signs with the secret, and is computed once per position', async () => {
    const tokens = new SessionTokens(SECRET, view().cv, 100)
    const { h } = host(tokens)
    const s = new Session(h, null)
    await s.write('INSERT')
    const a = s.token
    expect(a).toContain('.')
    expect(s.token).toBe(a)
    expect(tokens.open(a)).toEqual({ pos: { lsn: 1200n, timeline: 3 }, trusted: true })
  })
})
