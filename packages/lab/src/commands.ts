import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { Lab, type LabStatus } from './lab.js'
import { killLabSync, serverPids, teardown } from './procs.js'
import { startLab } from './start.js'
import { readState, statePath } from './state.js'
import { errorMessage, isProcessAlive } from './util.js'

export const USAGE = `resilient-lab: a real Patroni + etcd + Redis (+ Sentinel) cluster on 127.0.0.1, for tests.

Usage:
  resilient-lab up [--nodes N] [--sync] [--failsafe] [--sentinel] [--redis-replica] [--redis-cluster]
                   [--no-redis] [--dir DIR] [--timeout MS] [--json]
  resilient-lab status [--dir DIR] [--json]
  resilient-lab down [--dir DIR]
  resilient-lab chaos <verb> [arg] [--dir DIR] [--json]
  resilient-lab help

  up       starts a lab in the background (it outlives this command) and writes DIR/lab.json
  status   each member's role, state and lag; Redis and Sentinel (exit code 3 when unhealthy)
  down     stops every process of the lab by PID and removes DIR

Chaos verbs:
  kill-primary              kill -9 the leader's Patroni and postmaster; prints its name
  stop-member NAME          kill -9 a member (--graceful: SIGTERM, Patroni stops PostgreSQL)
  start-member NAME         start a member's Patroni again; waits until it runs
  switchover [NAME]         planned switchover (to NAME when given); waits for the new leader
  wait-primary              wait for a running leader (--not NAME: other than NAME)
  wait-replicas [N]         wait for N streaming replicas (default: members - 1)
  freeze-member NAME        SIGSTOP a member's Patroni, postmaster and all its children (a hang, no resets)
  freeze-primary            freeze-member of the leader; prints its name
  thaw-member NAME          SIGCONT them (children, postmaster, then Patroni)
  freeze-dcs                SIGSTOP etcd        thaw-dcs   SIGCONT it
  read-only on|off          default_transaction_read_only in Patroni's dynamic configuration
                            (every member, existing sessions too); waits until the leader shows it
  pause-redis               SIGSTOP the Redis primary      resume-redis   SIGCONT it
  kill-redis                kill -9 the Redis primary      restart-redis  start it again, same port
  kill-redis-primary        (--sentinel) kill -9 the sentinels' master
  demote-redis-primary      (--redis-replica) promote the replica, make the old primary its replica
                            (REPLICAOF); the endpoint follows (--drop: close its connections)
  failover-redis-cluster [NAME|KEY]
                            (--redis-cluster) CLUSTER FAILOVER of a master (by name, or the master
                            of KEY's slot; default the first) on its replica; waits until ok
  kill-redis-cluster-master [NAME|KEY]
                            (--redis-cluster) kill -9 a master; waits until its replica took over
  restart-redis-node NAME   start a stopped Redis server or Redis Cluster node again
  wait-redis-failover       (--sentinel) wait until the sentinels promote another server

Options:
  --dir DIR        lab folder (default: .lab under the current directory)
  --nodes N        Patroni members, 0 for Redis only (default 3)
  --sync           Patroni synchronous_mode
  --failsafe       Patroni failsafe_mode (the leader survives losing etcd while all members answer)
  --sentinel       a Redis replica and 3 sentinels (master name 'resilient')
  --redis-replica  a Redis replica and a fixed endpoint in front of the primary
  --redis-cluster  a Redis Cluster: 3 masters + 3 replicas
  --no-redis       no Redis
  --timeout MS     how long to wait for readiness or a chaos verb (default 90000)
  --json           machine-readable output
`

export interface CliIO {
  out: (text: string) => void
  err: (text: string) => void
  cwd: string
}

const defaultIO: CliIO = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  cwd: process.cwd(),
}

export interface ParsedCli {
  command: string
  positionals: string[]
  dir: string
  nodes: number
  sync: boolean
  failsafe: boolean
  sentinel: boolean
  redisReplica: boolean
  redisCluster: boolean
  drop: boolean
  redis: boolean
  json: boolean
  graceful: boolean
  not?: string
  timeoutMs: number
}

/** Parses argv (without node and the script). Throws with a usage hint on bad input. */
export function parseCli(argv: string[], cwd: string): ParsedCli {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      dir: { type: 'string' },
      nodes: { type: 'string' },
      sync: { type: 'boolean', default: false },
      failsafe: { type: 'boolean', default: false },
      sentinel: { type: 'boolean', default: false },
      'redis-replica': { type: 'boolean', default: false },
      'redis-cluster': { type: 'boolean', default: false },
      drop: { type: 'boolean', default: false },
      'no-redis': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      graceful: { type: 'boolean', default: false },
      not: { type: 'string' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  const [command = 'help', ...rest] = positionals
  const nodes = values.nodes === undefined ? 3 : Number(values.nodes)
  if (!Number.isInteger(nodes) || nodes < 0 || nodes > 9)
    throw new Error(`--nodes must be an integer 0..9, got ${values.nodes}`)
  const timeoutMs = values.timeout === undefined ? 90_000 : Number(values.timeout)
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0)
    throw new Error(`--timeout must be a positive number of ms, got ${values.timeout}`)
  return {
    command: values.help ? 'help' : command,
    positionals: rest,
    dir: resolve(cwd, values.dir ?? '.lab'),
    nodes,
    sync: values.sync ?? false,
    failsafe: values.failsafe ?? false,
    sentinel: values.sentinel ?? false,
    redisReplica: values['redis-replica'] ?? false,
    redisCluster: values['redis-cluster'] ?? false,
    drop: values.drop ?? false,
    redis: !(values['no-redis'] ?? false),
    json: values.json ?? false,
    graceful: values.graceful ?? false,
    ...(values.not !== undefined ? { not: values.not } : {}),
    timeoutMs,
  }
}

/** Runs one CLI invocation; resolves with the exit code. */
export async function runCli(argv: string[], io: CliIO = defaultIO): Promise<number> {
  let cli: ParsedCli
  try {
    cli = parseCli(argv, io.cwd)
  } catch (err) {
    io.err(`resilient-lab: ${errorMessage(err)}\n\n${USAGE}`)
    return 2
  }
  const log = (line: string) => {
    if (!cli.json) io.err(`[lab] ${line}\n`)
  }
  try {
    switch (cli.command) {
      case 'help':
        io.out(USAGE)
        return 0
      case 'up':
        return await up(cli, io, log)
      case 'status':
        return await status(cli, io, log)
      case 'down':
        return await down(cli, io, log)
      case 'chaos':
        return await chaos(cli, io, log)
      default:
        io.err(`resilient-lab: unknown command "${cli.command}"\n\n${USAGE}`)
        return 2
    }
  } catch (err) {
    io.err(`resilient-lab ${cli.command}: ${errorMessage(err)}\n`)
    return 1
  }
}

async function up(cli: ParsedCli, io: CliIO, log: (line: string) => void): Promise<number> {
  if (existsSync(statePath(cli.dir))) {
    const old = readState(cli.dir)
    const { servers, postmasters } = serverPids(old)
    if ([...servers, ...postmasters].some(isProcessAlive)) {
      throw new Error(
        `a lab is already running in ${cli.dir}; run "resilient-lab down --dir ${cli.dir}" first`,
      )
    }
    log(`removing the remains of a stopped lab in ${cli.dir}`)
    await teardown(old, log)
  }
  // A persistent lab has no exit hooks; but Ctrl-C while it boots must not leave half a lab.
  const abort = (signal: NodeJS.Signals) => {
    try {
      killLabSync(readState(cli.dir))
    } catch {
      // no state file yet: nothing started
    }
    io.err(`resilient-lab up: interrupted by ${signal}; stopped what had started\n`)
    process.exit(130)
  }
  process.once('SIGINT', abort)
  process.once('SIGTERM', abort)
  let lab: Lab
  try {
    lab = await startLab({
      nodes: cli.nodes,
      synchronousMode: cli.sync,
      failsafeMode: cli.failsafe,
      redis: cli.redis,
      sentinel: cli.sentinel,
      redisReplica: cli.redisReplica,
      redisCluster: cli.redisCluster,
      baseDir: cli.dir,
      readyTimeoutMs: cli.timeoutMs,
      persistent: true,
      log,
    })
  } finally {
    process.off('SIGINT', abort)
    process.off('SIGTERM', abort)
  }
  const info = await describe(lab)
  io.out(cli.json ? `${JSON.stringify(info, null, 2)}\n` : formatUp(info))
  return 0
}

export interface LabDescription {
  baseDir: string
  stateFile: string
  bootSeconds: number | undefined
  postgres?: { user: string; password: string; database: string }
  connectionString?: string
  patroni?: { endpoints: string[]; scope: string }
  members: Array<{ name: string; host: string; port: number; apiUrl: string; role?: string }>
  redis?: { host: string; port: number }
  redisEndpoint?: { host: string; port: number }
  redisCluster?: { nodes: Array<{ name: string; host: string; port: number; role: string }> }
  sentinel?: { sentinels: Array<{ host: string; port: number }>; name: string }
}

async function describe(lab: Lab): Promise<LabDescription> {
  const hasPg = lab.members.length > 0
  const cluster = hasPg ? await lab.cluster().catch(() => undefined) : undefined
  return {
    baseDir: lab.baseDir,
    stateFile: statePath(lab.baseDir),
    bootSeconds: lab.bootSeconds,
    ...(hasPg
      ? { postgres: lab.postgres, connectionString: lab.connectionString(), patroni: lab.patroni }
      : {}),
    members: lab.members.map((m) => {
      const role = cluster?.members.find((c) => c.name === m.name)?.role
      return { ...m, ...(role ? { role } : {}) }
    }),
    ...(lab.state.redis.length > 0 ? { redis: lab.redis } : {}),
    ...(lab.redisEndpoint ? { redisEndpoint: lab.redisEndpoint } : {}),
    ...(lab.redisCluster ? { redisCluster: lab.redisCluster } : {}),
    ...(lab.sentinel ? { sentinel: lab.sentinel } : {}),
  }
}

export function formatUp(info: LabDescription): string {
  const lines = [`lab up in ${info.bootSeconds ?? '?'} s: ${info.baseDir}`]
  if (info.postgres) {
    lines.push(
      `postgres   user=${info.postgres.user} password=${info.postgres.password} database=${info.postgres.database}`,
      `primary    ${info.connectionString}`,
    )
    for (const m of info.members) {
      lines.push(
        `  ${m.name.padEnd(5)} ${(m.role ?? '?').padEnd(12)} ${m.host}:${m.port}  patroni ${m.apiUrl}`,
      )
    }
    lines.push(`patroni    ${info.patroni?.endpoints.join(',')}`)
  }
  if (info.redis) lines.push(`redis      ${info.redis.host}:${info.redis.port}`)
  if (info.redisEndpoint)
    lines.push(`endpoint   ${info.redisEndpoint.host}:${info.redisEndpoint.port} (follows the Redis primary)`)
  if (info.redisCluster) {
    lines.push(
      `cluster    ${info.redisCluster.nodes.map((n) => `${n.host}:${n.port}${n.role === 'master' ? ' (master)' : ''}`).join(',')}`,
    )
  }
  if (info.sentinel) {
    lines.push(
      `sentinel   name=${info.sentinel.name} ${info.sentinel.sentinels.map((s) => `${s.host}:${s.port}`).join(',')}`,
    )
  }
  lines.push(`state      ${info.stateFile}`, '')
  return lines.join('\n')
}

function rehydrate(cli: ParsedCli, log: (line: string) => void): Lab {
  return Lab.fromState(readState(cli.dir), { log, readyTimeoutMs: cli.timeoutMs })
}

async function status(cli: ParsedCli, io: CliIO, log: (line: string) => void): Promise<number> {
  const lab = rehydrate(cli, log)
  const st = await lab.status()
  let streaming: string[] = []
  const leader = st.members.find((m) => m.role === 'leader')
  if (leader) {
    streaming = await lab
      .sql("select application_name from pg_stat_replication where state = 'streaming'", leader.name)
      .then((rows) => rows.map((r) => r[0] ?? ''))
      .catch(() => [])
  }
  const healthy = isHealthy(st, streaming)
  if (cli.json) io.out(`${JSON.stringify({ ...st, streaming, healthy }, null, 2)}\n`)
  else io.out(formatStatus(st, streaming))
  return healthy ? 0 : 3
}

export function isHealthy(st: LabStatus, streaming: string[]): boolean {
  if (st.dcsFrozen || st.members.some((m) => m.frozen)) return false
  if (st.members.length > 0) {
    const leaders = st.members.filter((m) => m.role === 'leader' && m.state === 'running')
    if (leaders.length !== 1) return false
    const replicas = st.members.filter((m) => m.role !== 'leader')
    if (!replicas.every((r) => streaming.includes(r.name) && typeof r.lag === 'number')) return false
  }
  if (st.redis.some((r) => r.role === 'down' || r.role === 'not answering')) return false
  if (st.redisCluster?.some((r) => r.detail !== 'cluster_state:ok')) return false
  if (st.redisEndpoint && !st.redisEndpoint.ok) return false
  return st.sentinels.every((s) => s.ok)
}

export function formatStatus(st: LabStatus, streaming: string[]): string {
  const lines = [`lab ${st.baseDir} (scope ${st.scope})`]
  if (st.members.length > 0) {
    if (st.patroniError) lines.push(`patroni: ${st.patroniError}`)
    if (st.dcsFrozen) lines.push('etcd: frozen (SIGSTOP; resilient-lab chaos thaw-dcs)')
    lines.push('member  role          state         lag       timeline  postgres         pid     replication')
    for (const m of st.members) {
      const lag = m.role === 'leader' ? '-' : m.lag === undefined ? '?' : String(m.lag)
      const repl =
        m.role === 'leader' ? 'primary' : streaming.includes(m.name) ? 'streaming' : 'not streaming'
      lines.push(
        [
          m.name.padEnd(7),
          m.role.padEnd(13),
          (m.frozen ? 'frozen' : m.state).padEnd(13),
          lag.padEnd(9),
          String(m.timeline ?? '-').padEnd(9),
          `127.0.0.1:${m.port}`.padEnd(16),
          String(m.pid ?? '-').padEnd(7),
          repl,
        ].join(' '),
      )
    }
    const leaders = st.members.filter((m) => m.role === 'leader').length
    const replicas = st.members.filter((m) => m.role !== 'leader' && streaming.includes(m.name)).length
    lines.push(`summary: ${leaders} leader, ${replicas} streaming replica${replicas === 1 ? '' : 's'}`)
  }
  for (const r of st.redis) {
    lines.push(
      `${r.name.padEnd(9)} ${r.role.padEnd(13)} 127.0.0.1:${r.port}  pid ${r.pid ?? '-'}  ${r.detail}`,
    )
  }
  for (const r of st.redisCluster ?? []) {
    lines.push(
      `${r.name.padEnd(9)} ${r.role.padEnd(13)} 127.0.0.1:${r.port}  pid ${r.pid ?? '-'}  ${r.detail}`,
    )
  }
  if (st.redisEndpoint) {
    const e = st.redisEndpoint
    lines.push(
      `${'endpoint'.padEnd(9)} ${(e.ok ? 'ok' : 'down').padEnd(13)} 127.0.0.1:${e.port}  pid ${e.pid ?? '-'}  -> ${e.target}`,
    )
  }
  for (const s of st.sentinels) {
    lines.push(
      `${s.name.padEnd(9)} ${(s.ok ? 'ok' : 'down').padEnd(13)} 127.0.0.1:${s.port}  pid ${s.pid ?? '-'}  master ${s.master}`,
    )
  }
  lines.push('')
  return lines.join('\n')
}

async function down(cli: ParsedCli, io: CliIO, log: (line: string) => void): Promise<number> {
  if (!existsSync(statePath(cli.dir))) {
    io.err(`no lab in ${cli.dir} (nothing to do)\n`)
    return 0
  }
  const lab = rehydrate(cli, log)
  await lab.down()
  io.out(`lab ${cli.dir} is down\n`)
  return 0
}

async function chaos(cli: ParsedCli, io: CliIO, log: (line: string) => void): Promise<number> {
  const [verb, arg] = cli.positionals
  if (!verb) throw new Error('chaos needs a verb (see resilient-lab help)')
  const lab = rehydrate(cli, log)
  const t0 = performance.now()
  const need = (what: string): string => {
    if (!arg) throw new Error(`chaos ${verb} needs ${what}`)
    return arg
  }
  let result: unknown
  switch (verb) {
    case 'kill-primary':
      result = { killed: await lab.killPrimary() }
      break
    case 'stop-member':
      await lab.stopMember(need('a member name'), { graceful: cli.graceful })
      result = { stopped: arg }
      break
    case 'start-member':
      await lab.startMember(need('a member name'), { timeoutMs: cli.timeoutMs })
      result = { started: arg }
      break
    case 'switchover': {
      const next = await lab.switchover({ ...(arg ? { candidate: arg } : {}), timeoutMs: cli.timeoutMs })
      result = { leader: next.name }
      break
    }
    case 'wait-primary': {
      const leader = await lab.waitForPrimary({
        ...(cli.not ? { not: cli.not } : {}),
        timeoutMs: cli.timeoutMs,
      })
      result = { leader: leader.name, port: leader.port }
      break
    }
    case 'wait-replicas': {
      const n = arg ? Number(arg) : lab.members.length - 1
      const replicas = await lab.waitForReplicas(n, { timeoutMs: cli.timeoutMs })
      result = { replicas: replicas.map((r) => r.name) }
      break
    }
    case 'freeze-member': {
      const frozen = await lab.freezeMember(need('a member name'))
      result = { frozen: frozen.name, pids: frozen.pids }
      break
    }
    case 'freeze-primary':
      result = { frozen: await lab.freezePrimary() }
      break
    case 'thaw-member':
      await lab.thawMember(need('a member name'))
      result = { thawed: arg }
      break
    case 'freeze-dcs':
      await lab.freezeDcs()
      result = { frozen: 'etcd' }
      break
    case 'thaw-dcs':
      await lab.thawDcs()
      result = { thawed: 'etcd' }
      break
    case 'read-only': {
      const value = need('on or off')
      if (value !== 'on' && value !== 'off')
        throw new Error(`chaos read-only needs on or off, got "${value}"`)
      await lab.setReadOnly(value === 'on', { timeoutMs: cli.timeoutMs })
      result = { readOnly: value }
      break
    }
    case 'pause-redis':
      await lab.pauseRedis()
      result = { paused: lab.redis }
      break
    case 'resume-redis':
      await lab.resumeRedis()
      result = { resumed: lab.redis }
      break
    case 'kill-redis':
      await lab.killRedis()
      result = { killed: lab.redis }
      break
    case 'restart-redis':
      await lab.restartRedis()
      result = { restarted: lab.redis }
      break
    case 'kill-redis-primary':
      result = { killed: await lab.killRedisPrimary() }
      break
    case 'demote-redis-primary': {
      const r = await lab.demoteRedisPrimary({ dropConnections: cli.drop, timeoutMs: cli.timeoutMs })
      result = { demoted: r.demoted, promoted: r.promoted }
      break
    }
    case 'failover-redis-cluster': {
      const r = await lab.failoverRedisClusterMaster(arg, { timeoutMs: cli.timeoutMs })
      result = { master: r.master, promoted: r.promoted }
      break
    }
    case 'kill-redis-cluster-master': {
      const r = await lab.killRedisClusterMaster(arg, { timeoutMs: cli.timeoutMs })
      result = { killed: r.master, promoted: r.promoted }
      break
    }
    case 'restart-redis-node':
      await lab.restartRedisNode(need('a Redis server name'))
      result = { restarted: arg }
      break
    case 'wait-redis-failover':
      result = { master: await lab.waitForRedisFailover({ timeoutMs: cli.timeoutMs }) }
      break
    default:
      throw new Error(`unknown chaos verb "${verb}" (see resilient-lab help)`)
  }
  lab.save()
  const seconds = Math.round((performance.now() - t0) / 100) / 10
  if (cli.json) io.out(`${JSON.stringify({ verb, ...(result as object), seconds })}\n`)
  else io.out(`${verb}: ${formatResult(result)} (${seconds} s)\n`)
  return 0
}

function formatResult(result: unknown): string {
  return Object.entries(result as Record<string, unknown>)
    .map(([k, v]) => {
      if (v && typeof v === 'object' && 'port' in v)
        return `${k} ${(v as { host?: string }).host ?? '127.0.0.1'}:${(v as { port: number }).port}`
      return `${k} ${Array.isArray(v) ? v.join(',') : String(v)}`
    })
    .join(', ')
}
