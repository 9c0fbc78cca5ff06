/**
 * Pure generation of every server's configuration: no I/O here, so it is unit-tested as is.
 */

export const PG_BIN_DIR = '/usr/lib/postgresql/15/bin'
export const HOST = '127.0.0.1'
export const SENTINEL_MASTER_NAME = 'resilient'

/** The Patroni DCS settings checked on these machines (see FACTS.md). Identical on every member. */
export const DCS_DEFAULTS = {
  ttl: 10,
  loop_wait: 2,
  retry_timeout: 5,
  maximum_lag_on_failover: 1_048_576,
} as const

export interface PatroniMemberConfigInput {
  scope: string
  name: string
  /** PostgreSQL port on 127.0.0.1. */
  port: number
  /** Patroni REST API port on 127.0.0.1. */
  apiPort: number
  etcdClientPort: number
  dataDir: string
  /**
   * Folder of the Unix socket. NOT the data folder: pg_rewind copies every file of the source's
   * data folder and fails on a socket ("could not open file .s.PGSQL.N: No such device or
   * address"), leaving an empty socket lock file behind that stops the member from starting.
   */
  socketDir: string
  pgpassPath: string
  superuser: { username: string; password: string }
  replication: { username: string; password: string }
  synchronousMode: boolean
  /**
   * Patroni `failsafe_mode`: a leader that loses the DCS stays primary as long as every member
   * answers its POST /failsafe (without it, Patroni 3.0.2 demotes the leader). Default false.
   */
  failsafeMode?: boolean
  binDir?: string
}

/**
 * The Patroni configuration of one member, as a plain object. Patroni reads YAML and JSON is
 * YAML, so the file is written with JSON.stringify: no YAML dependency and no quoting pitfalls.
 */
export function patroniConfig(input: PatroniMemberConfigInput): Record<string, unknown> {
  const hba = [
    'local all all trust',
    `host replication ${input.replication.username} ${HOST}/32 trust`,
    `host all all ${HOST}/32 scram-sha-256`,
  ]
  return {
    scope: input.scope,
    namespace: '/resilient-lab/',
    name: input.name,
    log: { level: 'INFO', format: '%(asctime)s %(levelname)s: %(message)s' },
    restapi: {
      listen: `${HOST}:${input.apiPort}`,
      connect_address: `${HOST}:${input.apiPort}`,
    },
    etcd3: { hosts: [`${HOST}:${input.etcdClientPort}`] },
    bootstrap: {
      dcs: {
        ...DCS_DEFAULTS,
        synchronous_mode: input.synchronousMode,
        failsafe_mode: input.failsafeMode ?? false,
        postgresql: {
          use_pg_rewind: true,
          use_slots: true,
          // "Important" parameters live in the DCS so that every member agrees on them.
          parameters: {
            wal_level: 'replica',
            hot_standby: 'on',
            max_connections: 100,
            max_wal_senders: 10,
            max_replication_slots: 10,
            max_worker_processes: 8,
            wal_log_hints: 'on',
            wal_keep_size: '128MB',
          },
        },
      },
      // --no-sync: a lab's data need not survive an OS crash; initdb is several seconds faster.
      initdb: [{ encoding: 'UTF8' }, { locale: 'C' }, 'no-sync'],
    },
    postgresql: {
      listen: `${HOST}:${input.port}`,
      connect_address: `${HOST}:${input.port}`,
      data_dir: input.dataDir,
      bin_dir: input.binDir ?? PG_BIN_DIR,
      pgpass: input.pgpassPath,
      use_unix_socket: true,
      // A member whose timeline diverged (a primary killed with WAL its successor never got)
      // and that pg_rewind cannot fix is re-cloned from the leader instead of staying broken.
      // Both exist in Patroni 3.0.2 (postgresql/rewind.py) and are local settings.
      remove_data_directory_on_rewind_failure: true,
      remove_data_directory_on_diverged_timelines: true,
      authentication: {
        superuser: input.superuser,
        replication: input.replication,
      },
      parameters: {
        unix_socket_directories: input.socketDir,
        shared_buffers: '32MB',
        // A process crash (kill -9) loses nothing with fsync off; only an OS crash would.
        fsync: 'off',
        full_page_writes: 'on',
        password_encryption: 'scram-sha-256',
        logging_collector: 'off',
        log_line_prefix: '%m [%p] ',
        log_min_messages: 'warning',
      },
      pg_hba: hba,
      basebackup: [{ checkpoint: 'fast' }, 'no-sync'],
    },
    tags: { nofailover: false, noloadbalance: false, clonefrom: false, nosync: false },
  }
}

export interface EtcdInput {
  name: string
  dataDir: string
  clientPort: number
  peerPort: number
  token: string
}

export function etcdArgs(input: EtcdInput): string[] {
  const client = `http://${HOST}:${input.clientPort}`
  const peer = `http://${HOST}:${input.peerPort}`
  return [
    '--name',
    input.name,
    '--data-dir',
    input.dataDir,
    '--listen-client-urls',
    client,
    '--advertise-client-urls',
    client,
    '--listen-peer-urls',
    peer,
    '--initial-advertise-peer-urls',
    peer,
    '--initial-cluster',
    `${input.name}=${peer}`,
    '--initial-cluster-state',
    'new',
    '--initial-cluster-token',
    input.token,
    '--enable-v2=true',
    '--log-level',
    'warn',
    '--logger',
    'zap',
  ]
}

export interface RedisInput {
  port: number
  dir: string
  /** When set, this server starts as a replica of 127.0.0.1:replicaOf. */
  replicaOf?: number
}

/** redis-server arguments. No persistence: a restart starts empty, as a cache usually does. */
export function redisArgs(input: RedisInput): string[] {
  const args = [
    '--port',
    String(input.port),
    '--bind',
    HOST,
    '--dir',
    input.dir,
    '--daemonize',
    'no',
    '--protected-mode',
    'no',
    '--save',
    '',
    '--appendonly',
    'no',
    '--logfile',
    '',
    '--loglevel',
    'notice',
    // Diskless full syncs start at once (the default waits 5 s for more replicas to join).
    '--repl-diskless-sync-delay',
    '0',
  ]
  if (input.replicaOf !== undefined) {
    args.push('--replicaof', HOST, String(input.replicaOf), '--replica-announce-ip', HOST)
  }
  return args
}

/** The Redis Cluster the lab starts with `redisCluster: true`. */
export const REDIS_CLUSTER_DEFAULTS = {
  /** Masters; the 16 384 slots are split evenly among them. */
  masters: 3,
  /** Replicas per master. */
  replicasPerMaster: 1,
  /**
   * `cluster-node-timeout`: a master that does not answer this long is failed over by its
   * replica (Redis's default is 15 000 ms; 2 000 ms keeps a kill test short).
   */
  nodeTimeoutMs: 2000,
} as const

export interface RedisClusterNodeInput {
  port: number
  /** The cluster bus port (`cluster-port`): drawn like every lab port, not port + 10000. */
  busPort: number
  dir: string
  nodeTimeoutMs?: number
}

/** redis-server arguments of a Redis Cluster node (no persistence; nodes.conf in its folder). */
export function redisClusterArgs(input: RedisClusterNodeInput): string[] {
  return [
    ...redisArgs({ port: input.port, dir: input.dir }),
    '--cluster-enabled',
    'yes',
    // Relative to --dir: the node's own folder.
    '--cluster-config-file',
    'nodes.conf',
    '--cluster-port',
    String(input.busPort),
    '--cluster-node-timeout',
    String(input.nodeTimeoutMs ?? REDIS_CLUSTER_DEFAULTS.nodeTimeoutMs),
    '--cluster-announce-ip',
    HOST,
  ]
}

export interface SentinelInput {
  port: number
  dir: string
  masterPort: number
  quorum: number
  name?: string
  downAfterMs?: number
  failoverTimeoutMs?: number
}

/** A sentinel.conf (Sentinel rewrites this file, so it must be a writable file of its own). */
export function sentinelConf(input: SentinelInput): string {
  const name = input.name ?? SENTINEL_MASTER_NAME
  return [
    `port ${input.port}`,
    `bind ${HOST}`,
    'protected-mode no',
    'daemonize no',
    `dir ${input.dir}`,
    'logfile ""',
    `sentinel announce-ip ${HOST}`,
    `sentinel monitor ${name} ${HOST} ${input.masterPort} ${input.quorum}`,
    `sentinel down-after-milliseconds ${name} ${input.downAfterMs ?? 1000}`,
    `sentinel failover-timeout ${name} ${input.failoverTimeoutMs ?? 10_000}`,
    `sentinel parallel-syncs ${name} 1`,
    '',
  ].join('\n')
}

/** Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107

/** Throws when PostgreSQL's socket path in `dir` would be too long for Linux. */
export function checkSocketDir(dir: string): void {
  const path = `${dir}/.s.PGSQL.65535`
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new Error(
      `lab folder too deep: the PostgreSQL socket path ${path} exceeds ${MAX_SOCKET_PATH} bytes; use a shorter baseDir`,
    )
  }
}

/** A Patroni scope unique to one lab folder: letters, digits and dashes only. */
export function scopeFor(baseDir: string): string {
  const tail = baseDir.split('/').filter(Boolean).pop() ?? 'lab'
  const cleaned = tail
    .replace(/[^A-Za-z0-9-]/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-|-$/g, '')
  // A short hash of the whole path: two labs in folders of the same name (".lab") differ.
  let hash = 0x811c9dc5
  for (const ch of Buffer.from(baseDir)) hash = Math.imul(hash ^ ch, 0x01000193) >>> 0
  return `lab-${(cleaned || 'x').slice(0, 40)}-${hash.toString(16).padStart(8, '0')}`
}

/** A random password of URL-safe characters (no quoting needed in URLs, pgpass or YAML). */
export function randomPassword(bytes: Uint8Array): string {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789'
  let out = ''
  for (const b of bytes) out += alphabet[b % alphabet.length]
  return out
}

/** postgres://user:password@127.0.0.1:port/database */
export function connectionString(
  creds: { user: string; password: string; database: string },
  host: string,
  port: number,
): string {
  return `postgres://${encodeURIComponent(creds.user)}:${encodeURIComponent(creds.password)}@${host}:${port}/${encodeURIComponent(creds.database)}`
}
