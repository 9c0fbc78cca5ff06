import { describe, expect, it } from 'vitest'
import {
  checkSocketDir,
  connectionString,
  DCS_DEFAULTS,
  etcdArgs,
  patroniConfig,
  redisArgs,
  scopeFor,
  sentinelConf,
} from '../src/config.js'

const input = {
  scope: 'lab-x',
  name: 'pg1',
  port: 15001,
  apiPort: 15002,
  etcdClientPort: 15003,
  dataDir: '/tmp/lab/pg1/data',
  socketDir: '/tmp/lab/pg1',
  pgpassPath: '/tmp/lab/pg1/pgpass',
  superuser: { username: 'postgres', password: 'pw' },
  replication: { username: 'replicator', password: 'rpw' },
  synchronousMode: false,
}

describe('patroniConfig', () => {
  const cfg = patroniConfig(input) as any

  it('uses the checked DCS settings, identical for every member', () => {
    expect(cfg.bootstrap.dcs).toMatchObject({
      ttl: 10,
      loop_wait: 2,
      retry_timeout: 5,
      maximum_lag_on_failover: 1_048_576,
      synchronous_mode: false,
    })
    expect(DCS_DEFAULTS.ttl).toBe(10)
    expect(cfg.bootstrap.dcs.postgresql.use_pg_rewind).toBe(true)
    expect(cfg.bootstrap.dcs.postgresql.parameters).toMatchObject({
      wal_level: 'replica',
      hot_standby: 'on',
      wal_log_hints: 'on',
      max_wal_senders: 10,
      max_replication_slots: 10,
      max_connections: 100,
    })
    const other = patroniConfig({ ...input, name: 'pg2', port: 1, apiPort: 2 }) as any
    expect(other.bootstrap).toEqual(cfg.bootstrap)
    expect((patroniConfig({ ...input, synchronousMode: true }) as any).bootstrap.dcs.synchronous_mode).toBe(
      true,
    )
    expect(cfg.bootstrap.dcs.failsafe_mode).toBe(false)
    expect((patroniConfig({ ...input, failsafeMode: true }) as any).bootstrap.dcs.failsafe_mode).toBe(true)
  })

  it('listens and advertises on 127.0.0.1 with its own ports, etcd3 on the lab etcd', () => {
    expect(cfg.scope).toBe('lab-x')
    expect(cfg.name).toBe('pg1')
    expect(cfg.restapi).toEqual({ listen: '127.0.0.1:15002', connect_address: '127.0.0.1:15002' })
    expect(cfg.postgresql.listen).toBe('127.0.0.1:15001')
    expect(cfg.postgresql.connect_address).toBe('127.0.0.1:15001')
    expect(cfg.etcd3).toEqual({ hosts: ['127.0.0.1:15003'] })
    expect(cfg.etcd).toBeUndefined()
  })

  it('keeps the Unix socket out of the data folder (pg_rewind copies every file in it)', () => {
    expect(cfg.postgresql.parameters.unix_socket_directories).toBe('/tmp/lab/pg1')
    expect(cfg.postgresql.parameters.unix_socket_directories).not.toBe(cfg.postgresql.data_dir)
    expect(cfg.postgresql.parameters.shared_buffers).toBe('32MB')
    // A diverged member is re-cloned by Patroni rather than left broken (Patroni 3.0.2 settings).
    expect(cfg.postgresql.remove_data_directory_on_rewind_failure).toBe(true)
    expect(cfg.postgresql.remove_data_directory_on_diverged_timelines).toBe(true)
  })

  it('password auth on 127.0.0.1, trusted replication, credentials from the input', () => {
    expect(cfg.postgresql.pg_hba).toEqual([
      'local all all trust',
      'host replication replicator 127.0.0.1/32 trust',
      'host all all 127.0.0.1/32 scram-sha-256',
    ])
    expect(cfg.postgresql.authentication.superuser).toEqual({ username: 'postgres', password: 'pw' })
    expect(cfg.postgresql.authentication.replication).toEqual({ username: 'replicator', password: 'rpw' })
  })

  it('serialises to JSON (which Patroni reads as YAML)', () => {
    expect(JSON.parse(JSON.stringify(cfg))).toEqual(cfg)
  })
})

describe('etcd, redis and sentinel arguments', () => {
  it('etcd: v2 enabled, loopback client and peer URLs', () => {
    const args = etcdArgs({ name: 'etcd0', dataDir: '/d', clientPort: 1, peerPort: 2, token: 't' })
    expect(args).toContain('--enable-v2=true')
    const value = (flag: string) => args[args.indexOf(flag) + 1]
    expect(value('--listen-client-urls')).toBe('http://127.0.0.1:1')
    expect(value('--listen-peer-urls')).toBe('http://127.0.0.1:2')
    expect(value('--initial-cluster')).toBe('etcd0=http://127.0.0.1:2')
  })

  it('redis: loopback, no persistence, replicaof when asked', () => {
    const primary = redisArgs({ port: 7000, dir: '/r' })
    expect(primary.slice(0, 4)).toEqual(['--port', '7000', '--bind', '127.0.0.1'])
    expect(primary).not.toContain('--replicaof')
    expect(primary[primary.indexOf('--save') + 1]).toBe('')
    const replica = redisArgs({ port: 7001, dir: '/r', replicaOf: 7000 })
    expect(replica.slice(replica.indexOf('--replicaof'), replica.indexOf('--replicaof') + 3)).toEqual([
      '--replicaof',
      '127.0.0.1',
      '7000',
    ])
  })

  it('sentinel.conf monitors master "resilient" with the quorum', () => {
    const conf = sentinelConf({ port: 26000, dir: '/s', masterPort: 7000, quorum: 2 })
    expect(conf).toContain('port 26000\n')
    expect(conf).toContain('sentinel monitor resilient 127.0.0.1 7000 2\n')
    expect(conf).toContain('sentinel down-after-milliseconds resilient 1000\n')
  })
})

describe('helpers', () => {
  it('scopeFor: safe characters, unique per folder even for equal names', () => {
    const a = scopeFor('/work/a/.lab')
    const b = scopeFor('/work/b/.lab')
    expect(a).toMatch(/^lab-[A-Za-z0-9-]+$/)
    expect(a).not.toBe(b)
    expect(scopeFor('/tmp/resilient-lab-Ab_c')).toMatch(/^lab-resilient-lab-Ab-c-[0-9a-f]{8}$/)
    expect(scopeFor('/tmp/x')).toBe(scopeFor('/tmp/x'))
  })

  it('connectionString encodes credentials', () => {
    expect(
      connectionString({ user: 'postgres', password: 'p@ss/w:rd', database: 'postgres' }, '127.0.0.1', 5),
    ).toBe('postgres://postgres:p%40ss%2Fw%3Ard@127.0.0.1:5/postgres')
  })

  it('checkSocketDir refuses paths too long for a Unix socket', () => {
    expect(() => checkSocketDir('/tmp/resilient-lab-abc/pg0')).not.toThrow()
    expect(() => checkSocketDir(`/tmp/${'x'.repeat(100)}`)).toThrow(/too deep/)
  })
})
