import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export const STATE_FILE = 'lab.json'
export const STATE_VERSION = 1

export interface MemberState {
  name: string
  /** PostgreSQL port on 127.0.0.1. */
  port: number
  /** Patroni REST port on 127.0.0.1. */
  apiPort: number
  dir: string
  dataDir: string
  configPath: string
  logPath: string
  /** PID of the running patroni, if any. */
  pid?: number
}

export interface RedisNodeState {
  name: string
  port: number
  dir: string
  logPath: string
  pid?: number
  /** Whether this server was started as a replica (`--replicaof`). */
  startedAsReplica: boolean
}

export interface RedisClusterNodeState {
  name: string
  port: number
  /** Cluster bus port (`cluster-port`). */
  busPort: number
  dir: string
  logPath: string
  pid?: number
  /** The role as of the lab's last look (boot, failover verbs); a node that is down keeps its last. */
  role: 'master' | 'replica'
  /** The node ID (CLUSTER MYID), known once the cluster is formed. */
  id?: string
}

/** The fixed Redis endpoint (a TCP proxy to the current primary, like Memorystore's). */
export interface RedisEndpointState {
  port: number
  dir: string
  logPath: string
  scriptPath: string
  pid?: number
}

export interface SentinelState {
  name: string
  port: number
  dir: string
  confPath: string
  logPath: string
  pid?: number
}

/** Everything needed to drive a lab from another process (the CLI) or after a crash. */
export interface LabState {
  version: number
  baseDir: string
  scope: string
  createdAt: string
  /** The process that owns the lab (its exit ends the lab), absent for a persistent (CLI) lab. */
  ownerPid?: number
  synchronousMode: boolean
  /** Patroni `failsafe_mode` (DCS setting), absent in labs started before it existed. */
  failsafeMode?: boolean
  /** What the lab froze with SIGSTOP and has not thawed yet: member names, and etcd. */
  frozen?: { members: string[]; dcs: boolean }
  /** Seconds from startLab() to ready, as measured when it started. */
  bootSeconds?: number
  postgres: {
    user: string
    password: string
    database: string
    replicationUser: string
    replicationPassword: string
  }
  etcd?: { clientPort: number; peerPort: number; dir: string; logPath: string; pid?: number }
  members: MemberState[]
  redis: RedisNodeState[]
  /** Name of the Redis node believed to be the primary. */
  redisPrimary?: string
  sentinel?: { masterName: string; quorum: number; sentinels: SentinelState[] }
  /** Redis Cluster (`redisCluster: true`). */
  redisCluster?: { masters: number; nodeTimeoutMs: number; nodes: RedisClusterNodeState[] }
  /** The fixed endpoint in front of the Redis primary (`redisReplica: true`). */
  redisEndpoint?: RedisEndpointState
  watchdogPid?: number
  /** Every PID the lab has started (servers and watchdog), for tests and teardown. */
  startedPids: number[]
  /** Every port this lab reserved (see PortAllocator). */
  ports: number[]
}

export function statePath(baseDir: string): string {
  return join(baseDir, STATE_FILE)
}

export function serializeState(state: LabState): string {
  return `${JSON.stringify(state, null, 2)}\n`
}

/** Writes the state file atomically (temp file + rename), readable by its owner only (it holds passwords). */
export function writeState(state: LabState, file = statePath(state.baseDir)): void {
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, serializeState(state), { mode: 0o600 })
  renameSync(tmp, file)
}

export function parseState(text: string, source = 'state'): LabState {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new Error(`${source} is not valid JSON: ${(err as Error).message}`)
  }
  const fail = (what: string): never => {
    throw new Error(`${source} is not a lab state file: ${what}`)
  }
  if (!raw || typeof raw !== 'object') fail('not an object')
  const s = raw as Partial<LabState>
  if (s.version !== STATE_VERSION) fail(`version ${String(s.version)} (expected ${STATE_VERSION})`)
  if (typeof s.baseDir !== 'string' || !s.baseDir.startsWith('/')) fail('baseDir')
  if (typeof s.scope !== 'string') fail('scope')
  if (!s.postgres || typeof s.postgres.password !== 'string') fail('postgres credentials')
  if (!Array.isArray(s.members)) fail('members')
  for (const m of s.members ?? []) {
    if (typeof m.name !== 'string' || !Number.isInteger(m.port) || !Number.isInteger(m.apiPort))
      fail('member')
  }
  if (!Array.isArray(s.redis)) fail('redis')
  if (!Array.isArray(s.startedPids)) fail('startedPids')
  if (!Array.isArray(s.ports)) fail('ports')
  return s as LabState
}

export function readState(fileOrDir: string): LabState {
  const file = fileOrDir.endsWith('.json') ? fileOrDir : statePath(fileOrDir)
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(`no lab state file at ${file} (is a lab running? start one with "resilient-lab up")`)
    }
    throw err
  }
  return parseState(text, file)
}
