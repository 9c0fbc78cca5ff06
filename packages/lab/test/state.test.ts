import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  type LabState,
  parseState,
  readState,
  STATE_VERSION,
  serializeState,
  writeState,
} from '../src/state.js'

let dir: string
afterEach(() => rmSync(dir, { recursive: true, force: true }))

function sample(baseDir: string): LabState {
  return {
    version: STATE_VERSION,
    baseDir,
    scope: 'lab-x-00000000',
    createdAt: '2026-01-01T00:00:00.000Z',
    ownerPid: 123,
    synchronousMode: false,
    bootSeconds: 4.2,
    postgres: {
      user: 'postgres',
      password: 'pw',
      database: 'postgres',
      replicationUser: 'r',
      replicationPassword: 'rp',
    },
    etcd: {
      clientPort: 1,
      peerPort: 2,
      dir: `${baseDir}/etcd`,
      logPath: `${baseDir}/etcd/etcd.log`,
      pid: 10,
    },
    members: [
      {
        name: 'pg0',
        port: 3,
        apiPort: 4,
        dir: `${baseDir}/pg0`,
        dataDir: `${baseDir}/pg0/data`,
        configPath: `${baseDir}/pg0/patroni.yml`,
        logPath: `${baseDir}/pg0/patroni.log`,
        pid: 11,
      },
    ],
    redis: [
      { name: 'redis0', port: 5, dir: `${baseDir}/redis0`, logPath: 'l', pid: 12, startedAsReplica: false },
    ],
    redisPrimary: 'redis0',
    sentinel: {
      masterName: 'resilient',
      quorum: 2,
      sentinels: [{ name: 'sentinel0', port: 6, dir: 'd', confPath: 'c', logPath: 'l', pid: 13 }],
    },
    watchdogPid: 14,
    startedPids: [10, 11, 12, 13, 14],
    ports: [1, 2, 3, 4, 5, 6],
  }
}

describe('state file', () => {
  it('round-trips through lab.json (owner-only permissions: it holds passwords)', () => {
    dir = mkdtempSync(join(tmpdir(), 'lab-state-test-'))
    const state = sample(dir)
    writeState(state)
    expect(statSync(join(dir, 'lab.json')).mode & 0o777).toBe(0o600)
    expect(readState(dir)).toEqual(state)
    expect(readState(join(dir, 'lab.json'))).toEqual(state)
    expect(parseState(serializeState(state))).toEqual(state)
  })

  it('explains a missing or foreign file', () => {
    dir = mkdtempSync(join(tmpdir(), 'lab-state-test-'))
    expect(() => readState(dir)).toThrow(/no lab state file.*resilient-lab up/)
    writeFileSync(join(dir, 'lab.json'), '{"version": 99}')
    expect(() => readState(dir)).toThrow(/not a lab state file: version 99/)
    writeFileSync(join(dir, 'lab.json'), 'nope')
    expect(() => readState(dir)).toThrow(/not valid JSON/)
    const bad = { ...sample(dir), members: [{ name: 'pg0', port: 'x' }] }
    expect(() => parseState(JSON.stringify(bad))).toThrow(/member/)
    expect(readFileSync(join(dir, 'lab.json'), 'utf8')).toBe('nope')
  })
})
