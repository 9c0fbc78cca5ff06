import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { formatStatus, isHealthy, parseCli } from '../src/commands.js'
import type { LabStatus } from '../src/lab.js'
import { parsePsqlOutput } from '../src/lab.js'
import { encodeCommand, parseInfo, parseReply, RespError } from '../src/resp.js'
import { isProcessAlive, readPostmasterPid, waitFor } from '../src/util.js'

describe('RESP', () => {
  it('encodes commands as arrays of bulk strings', () => {
    expect(encodeCommand(['SET', 'k', 'é']).toString()).toBe('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\né\r\n')
  })

  it('parses every RESP2 type, and waits for whole values', () => {
    expect(parseReply(Buffer.from('+PONG\r\n'))?.value).toBe('PONG')
    expect(parseReply(Buffer.from(':42\r\n'))?.value).toBe(42)
    expect(parseReply(Buffer.from('$-1\r\n'))?.value).toBeNull()
    expect(parseReply(Buffer.from('-ERR nope\r\n'))?.value).toBeInstanceOf(RespError)
    expect(parseReply(Buffer.from('*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n'))?.value).toEqual([
      '127.0.0.1',
      '6379',
    ])
    expect(parseReply(Buffer.from('*2\r\n$9\r\n127.0.0.1\r\n$4\r\n63'))).toBeUndefined()
    expect(parseReply(Buffer.from('$5\r\nab'))).toBeUndefined()
  })

  it('parses INFO', () => {
    expect(parseInfo('# Replication\r\nrole:master\r\nconnected_slaves:1\r\n')).toEqual({
      role: 'master',
      connected_slaves: '1',
    })
  })
})

describe('psql output', () => {
  it('splits unaligned records and fields, keeping | and newlines inside values', () => {
    expect(parsePsqlOutput('')).toEqual([])
    expect(parsePsqlOutput('1\x1fa|b\x1e2\x1fline\nbreak\n')).toEqual([
      ['1', 'a|b'],
      ['2', 'line\nbreak'],
    ])
    expect(parsePsqlOutput('t\n')).toEqual([['t']])
  })
})

describe('process helpers', () => {
  it('isProcessAlive: this process yes, an unused PID no', () => {
    expect(isProcessAlive(process.pid)).toBe(true)
    expect(isProcessAlive(2 ** 22 + 7)).toBe(false)
    expect(isProcessAlive(0)).toBe(false)
  })

  it('reads postmaster.pid (PID and shared memory key/id)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lab-pm-test-'))
    try {
      expect(readPostmasterPid(dir)).toBeUndefined()
      writeFileSync(
        join(dir, 'postmaster.pid'),
        '4242\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  5432001        65\nready   \n',
      )
      expect(readPostmasterPid(dir)).toEqual({ pid: 4242, shmKey: 5432001, shmId: 65 })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('waitFor resolves, times out with the last error, and stops at once on a fatal error', async () => {
    let n = 0
    expect(await waitFor('three', () => (++n >= 3 ? n : undefined), { timeoutMs: 1000, intervalMs: 1 })).toBe(
      3,
    )
    await expect(
      waitFor(
        'never',
        () => {
          throw new Error('boom')
        },
        { timeoutMs: 30, intervalMs: 5 },
      ),
    ).rejects.toThrow(/waiting for never: boom/)
    const t0 = Date.now()
    await expect(
      waitFor(
        'fatal',
        () => {
          throw Object.assign(new Error('exited'), { fatal: true })
        },
        { timeoutMs: 5000 },
      ),
    ).rejects.toThrow('exited')
    expect(Date.now() - t0).toBeLessThan(1000)
  })
})

describe('CLI parsing and status', () => {
  it('defaults: 3 nodes, .lab under cwd, redis on', () => {
    expect(parseCli(['up'], '/w')).toMatchObject({
      command: 'up',
      dir: '/w/.lab',
      nodes: 3,
      redis: true,
      sync: false,
    })
    expect(
      parseCli(['up', '--nodes', '1', '--sync', '--sentinel', '--dir', 'x', '--json'], '/w'),
    ).toMatchObject({
      nodes: 1,
      sync: true,
      sentinel: true,
      dir: '/w/x',
      json: true,
    })
    expect(parseCli(['chaos', 'stop-member', 'pg1', '--graceful'], '/w')).toMatchObject({
      command: 'chaos',
      positionals: ['stop-member', 'pg1'],
      graceful: true,
    })
    expect(parseCli(['up', '--failsafe'], '/w')).toMatchObject({ failsafe: true, sync: false })
    expect(parseCli([], '/w').command).toBe('help')
    expect(() => parseCli(['up', '--nodes', '-1'], '/w')).toThrow(/--nodes/)
    expect(() => parseCli(['up', '--bogus'], '/w')).toThrow()
  })

  const st: LabStatus = {
    baseDir: '/w/.lab',
    scope: 's',
    members: [
      { name: 'pg0', port: 1, apiUrl: 'u', pid: 1, role: 'leader', state: 'running', timeline: 1 },
      { name: 'pg1', port: 2, apiUrl: 'u', pid: 2, role: 'replica', state: 'running', lag: 0, timeline: 1 },
      { name: 'pg2', port: 3, apiUrl: 'u', pid: 3, role: 'replica', state: 'running', lag: 16, timeline: 1 },
    ],
    redis: [{ name: 'redis0', port: 4, pid: 4, role: 'master', detail: '' }],
    sentinels: [],
  }

  it('healthy means one running leader, every replica streaming, Redis answering', () => {
    expect(isHealthy(st, ['pg1', 'pg2'])).toBe(true)
    expect(isHealthy(st, ['pg1'])).toBe(false)
    expect(isHealthy({ ...st, redis: [{ ...st.redis[0]!, role: 'not answering' }] }, ['pg1', 'pg2'])).toBe(
      false,
    )
    expect(isHealthy({ ...st, members: st.members.slice(1) }, ['pg1', 'pg2'])).toBe(false)
    const frozen = { ...st, members: st.members.map((m) => (m.name === 'pg2' ? { ...m, frozen: true } : m)) }
    expect(isHealthy(frozen, ['pg1', 'pg2'])).toBe(false)
    expect(isHealthy({ ...st, dcsFrozen: true }, ['pg1', 'pg2'])).toBe(false)
    expect(formatStatus(frozen, ['pg1', 'pg2'])).toMatch(/pg2\s+replica\s+frozen/)
    expect(formatStatus({ ...st, dcsFrozen: true }, ['pg1', 'pg2'])).toContain('etcd: frozen')
  })

  it('prints role, state and lag per member and a summary line', () => {
    const text = formatStatus(st, ['pg1', 'pg2'])
    expect(text).toMatch(/pg0\s+leader\s+running\s+-/)
    expect(text).toMatch(/pg2\s+replica\s+running\s+16\s+.*streaming/)
    expect(text).toContain('summary: 1 leader, 2 streaming replicas')
  })
})
