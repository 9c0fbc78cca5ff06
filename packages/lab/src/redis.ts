/**
 * The lab's Redis servers: a standalone primary (`redis0`), optionally a replica (`redis1`)
 * with the fixed endpoint in front of the primary, or a replica and three Sentinels; their chaos
 * verbs (pause, kill, restart, Sentinel failover, demotion behind the endpoint).
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { HOST, redisArgs, SENTINEL_MASTER_NAME, sentinelConf } from './config.js'
import type { LabContext } from './context.js'
import type { PortAllocator } from './ports.js'
import { spawnServer } from './procs.js'
import { ENDPOINT_SOURCE } from './redis-endpoint.js'
import { parseInfo, RespError, type RespValue, redisCommand } from './resp.js'
import type { LabState, RedisNodeState } from './state.js'
import {
  errorMessage,
  fatal,
  isProcessAlive,
  signalPid,
  signalTree,
  tail,
  waitFor,
  waitForExit,
  waitUntilRefused,
} from './util.js'

/** The Redis servers' own configuration (startLab's options for them). */
export interface RedisConfig {
  /** A Redis server at all. */
  enabled: boolean
  /** A replica (redis1) and the fixed endpoint. */
  replica: boolean
  /** A replica and 3 sentinels. */
  sentinel: boolean
}

export interface RedisAddress {
  host: string
  port: number
}

export interface SentinelInfo {
  sentinels: RedisAddress[]
  name: string
}

/** One server in status(). */
export interface RedisStatusLine {
  name: string
  port: number
  pid: number | undefined
  role: string
  detail: string
}

export class RedisServers {
  readonly #ctx: LabContext

  constructor(ctx: LabContext) {
    this.#ctx = ctx
  }

  /** Adds the Redis servers, the endpoint and the sentinels to a state being planned. */
  static async plan(
    state: LabState,
    ports: PortAllocator,
    mkdir: (path: string) => string,
    config: RedisConfig,
  ): Promise<void> {
    if (!config.enabled) return
    const count = config.sentinel || config.replica ? 2 : 1
    for (let i = 0; i < count; i++) {
      const name = `redis${i}`
      const dir = mkdir(join(state.baseDir, name))
      state.redis.push({
        name,
        port: await ports.next(),
        dir,
        logPath: join(dir, 'redis.log'),
        startedAsReplica: i > 0,
      })
    }
    state.redisPrimary = 'redis0'
    if (config.replica) {
      const dir = mkdir(join(state.baseDir, 'redis-endpoint'))
      state.redisEndpoint = {
        port: await ports.next(),
        dir,
        logPath: join(dir, 'endpoint.log'),
        scriptPath: join(dir, 'endpoint.cjs'),
      }
    }
    if (config.sentinel) {
      const sentinels = []
      for (let i = 0; i < 3; i++) {
        const name = `sentinel${i}`
        const dir = mkdir(join(state.baseDir, name))
        sentinels.push({
          name,
          port: await ports.next(),
          dir,
          confPath: join(dir, 'sentinel.conf'),
          logPath: join(dir, 'sentinel.log'),
        })
      }
      state.sentinel = { masterName: SENTINEL_MASTER_NAME, quorum: 2, sentinels }
    }
  }

  /** The Redis server believed to be the primary (updated by waitForRedisFailover()). */
  get redis(): RedisAddress {
    this.#ctx.refresh()
    const node = this.#redisPrimaryNode()
    return { host: HOST, port: node?.port ?? 0 }
  }

  get redisNodes(): Array<RedisAddress & { name: string; pid?: number }> {
    this.#ctx.refresh()
    return this.#ctx.state.redis.map((r) => ({
      name: r.name,
      host: HOST,
      port: r.port,
      ...(r.pid ? { pid: r.pid } : {}),
    }))
  }

  /**
   * The fixed Redis endpoint (`redisReplica: true`): a TCP proxy that connects each new
   * connection to the current Redis primary, like a managed service's primary endpoint.
   */
  get redisEndpoint(): RedisAddress | undefined {
    this.#ctx.refresh()
    const e = this.#ctx.state.redisEndpoint
    return e ? { host: HOST, port: e.port } : undefined
  }

  get sentinel(): SentinelInfo | undefined {
    const s = this.#ctx.state.sentinel
    if (!s) return undefined
    return { sentinels: s.sentinels.map((x) => ({ host: HOST, port: x.port })), name: s.masterName }
  }

  /** SIGSTOP the Redis primary: it still accepts TCP connections but never answers. */
  async pauseRedis(): Promise<void> {
    this.#ctx.refresh()
    const node = this.#requireRedisPrimary()
    if (!node.pid) throw new Error(`${node.name} is not running`)
    process.kill(node.pid, 'SIGSTOP')
    this.#ctx.log(`paused ${node.name} (SIGSTOP ${node.pid})`)
  }

  async resumeRedis(): Promise<void> {
    this.#ctx.refresh()
    const node = this.#requireRedisPrimary()
    if (!node.pid) throw new Error(`${node.name} is not running`)
    process.kill(node.pid, 'SIGCONT')
    this.#ctx.log(`resumed ${node.name} (SIGCONT ${node.pid})`)
  }

  /** kill -9 the Redis primary. */
  async killRedis(): Promise<void> {
    this.#ctx.refresh()
    await this.#killRedisNode(this.#requireRedisPrimary())
  }

  /** Starts the Redis primary again on the same port with the same folder; resolves when it answers PING. */
  async restartRedis(): Promise<void> {
    this.#ctx.refresh()
    await this.#restartRedisNode(this.#requireRedisPrimary())
  }

  /**
   * Starts any stopped Redis server of the lab again (by name, e.g. 'redis0', 'redis1', or a
   * Redis Cluster node such as 'cluster0', which rejoins as a replica of its slots' new master).
   */
  async restartRedisNode(name: string): Promise<void> {
    this.#ctx.refresh()
    const node = this.#ctx.state.redis.find((r) => r.name === name)
    if (!node) throw new Error(`no such Redis server: ${name}`)
    await this.#restartRedisNode(node)
  }

  /**
   * (Re)starts a Redis server on its port and folder. With sentinels, a server that is not the
   * sentinels' master comes back as a replica of that master (as Sentinel would make it).
   */
  async #restartRedisNode(node: RedisNodeState): Promise<void> {
    if (node.pid && isProcessAlive(node.pid)) await this.#killRedisNode(node)
    let master = this.#redisPrimaryNode()?.port
    if (this.#ctx.state.sentinel)
      master = (await this.sentinelMaster().catch(() => undefined))?.port ?? master
    await this.#spawnRedis(node, master !== undefined && master !== node.port ? master : undefined)
    await this.#waitForPing(node.port, this.#ctx.readyTimeoutMs)
  }

  /** Sentinel mode: kill -9 the server the sentinels call master. Returns its address. */
  async killRedisPrimary(): Promise<RedisAddress & { name: string }> {
    this.#ctx.refresh()
    const addr = await this.sentinelMaster()
    const node = this.#ctx.state.redis.find((r) => r.port === addr.port)
    if (!node) throw new Error(`the sentinels' master ${addr.host}:${addr.port} is not a server of this lab`)
    await this.#killRedisNode(node)
    return { name: node.name, host: HOST, port: node.port }
  }

  /** Sentinel mode: the master address according to the first sentinel that answers. */
  async sentinelMaster(): Promise<RedisAddress> {
    const s = this.#ctx.state.sentinel
    if (!s) throw new Error('this lab has no sentinels (start it with sentinel: true)')
    let lastError: unknown
    for (const sentinel of s.sentinels) {
      try {
        const reply = await redisCommand(sentinel.port, ['SENTINEL', 'get-master-addr-by-name', s.masterName])
        if (Array.isArray(reply) && typeof reply[0] === 'string' && typeof reply[1] === 'string') {
          return { host: reply[0], port: Number(reply[1]) }
        }
        lastError = new Error(`unexpected reply ${JSON.stringify(reply)}`)
      } catch (err) {
        lastError = err
      }
    }
    throw new Error(`no sentinel answered: ${errorMessage(lastError)}`, { cause: lastError })
  }

  /**
   * Sentinel mode: resolves once a majority of sentinels name a master other than `not`
   * (default: the primary known before) and that server answers ROLE with 'master'.
   * Updates lab.redis.
   */
  async waitForRedisFailover(opts: { not?: number; timeoutMs?: number } = {}): Promise<RedisAddress> {
    this.#ctx.refresh()
    const s = this.#ctx.state.sentinel
    if (!s) throw new Error('this lab has no sentinels (start it with sentinel: true)')
    const oldPort = opts.not ?? this.redis.port
    const addr = await waitFor(
      `the sentinels to promote a new Redis master (not ${oldPort})`,
      async () => {
        const answers = await Promise.all(
          s.sentinels.map((x) =>
            redisCommand(x.port, ['SENTINEL', 'get-master-addr-by-name', s.masterName], {
              timeoutMs: 500,
            }).catch(() => null),
          ),
        )
        const ports = answers.flatMap((a) =>
          Array.isArray(a) && typeof a[1] === 'string' ? [Number(a[1])] : [],
        )
        const moved = ports.filter((p) => p !== oldPort)
        const candidate = moved[0]
        if (candidate === undefined || moved.filter((p) => p === candidate).length < s.quorum)
          return undefined
        const role = await redisCommand(candidate, ['ROLE'], { timeoutMs: 500 })
        return Array.isArray(role) && role[0] === 'master' ? { host: HOST, port: candidate } : undefined
      },
      { timeoutMs: opts.timeoutMs ?? this.#ctx.readyTimeoutMs, intervalMs: 100 },
    )
    const node = this.#ctx.state.redis.find((r) => r.port === addr.port)
    if (node) {
      this.#ctx.state.redisPrimary = node.name
      this.#ctx.save()
    }
    return addr
  }

  /**
   * A failover that demotes the server clients are connected to (Memorystore standard tier,
   * ElastiCache): the replica is promoted (`REPLICAOF NO ONE`) and the old primary becomes its
   * replica (`REPLICAOF 127.0.0.1 <port>`). A client still connected to the old primary gets
   * `READONLY` on writes while its reads keep working; the fixed endpoint
   * (`lab.redisEndpoint`) sends new connections to the new primary. Nothing acknowledged is
   * lost: the old primary's writers are paused (`CLIENT PAUSE WRITE`) until the replica has
   * caught up, and the writes that waited get READONLY. `dropConnections: true` also closes
   * every connection made through the endpoint (a provider that drops them). Needs a replica
   * (`redisReplica: true`) and no sentinels (they would undo it). Updates `lab.redis`.
   */
  async demoteRedisPrimary(
    opts: { dropConnections?: boolean; timeoutMs?: number } = {},
  ): Promise<{ demoted: string; promoted: string; seconds: number }> {
    this.#ctx.refresh()
    const started = performance.now()
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
    if (this.#ctx.state.sentinel)
      throw new Error('demoteRedisPrimary() is for a lab without sentinels (they would fail it back)')
    const old = this.#requireRedisPrimary()
    const next = this.#ctx.state.redis.find((r) => r !== old && r.pid !== undefined && isProcessAlive(r.pid))
    if (!next)
      throw new Error('there is no running Redis replica to promote (start the lab with redisReplica: true)')
    const ok = async (port: number, args: string[]) => {
      const reply = await redisCommand(port, args, { timeoutMs: 2000 })
      if (reply instanceof RespError) throw new Error(`${args.join(' ')} on port ${port}: ${reply.message}`)
      return reply
    }
    // Hold the old primary's writers while the replica catches up (as a planned failover does).
    await ok(old.port, ['CLIENT', 'PAUSE', String(Math.max(10_000, timeoutMs)), 'WRITE'])
    try {
      await waitFor(
        `${next.name} to catch up with ${old.name}`,
        async () => {
          const master = parseInfo(String(await ok(old.port, ['INFO', 'replication'])))
          const replica = parseInfo(String(await ok(next.port, ['INFO', 'replication'])))
          return Number(replica.slave_repl_offset) >= Number(master.master_repl_offset) ? true : undefined
        },
        { timeoutMs, intervalMs: 20 },
      )
      await ok(next.port, ['REPLICAOF', 'NO', 'ONE'])
      // lab.json names the new primary: the endpoint's next connection goes there.
      this.#ctx.state.redisPrimary = next.name
      this.#ctx.save()
      await ok(old.port, ['REPLICAOF', HOST, String(next.port)])
    } finally {
      await ok(old.port, ['CLIENT', 'UNPAUSE']).catch(() => {})
    }
    if (opts.dropConnections && this.#ctx.state.redisEndpoint?.pid)
      signalPid(this.#ctx.state.redisEndpoint.pid, 'SIGUSR2', this.#ctx.baseDir)
    await waitFor(
      `${old.name} to replicate from ${next.name}`,
      async () => {
        const info = parseInfo(String(await ok(old.port, ['INFO', 'replication'])))
        return info.role === 'slave' &&
          info.master_link_status === 'up' &&
          Number(info.master_port) === next.port
          ? true
          : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
    const seconds = Math.round((performance.now() - started) / 100) / 10
    this.#ctx.log(`redis: promoted ${next.name}, demoted ${old.name} to its replica (${seconds} s)`)
    return { demoted: old.name, promoted: next.name, seconds }
  }

  /** One Redis command to a server of the lab (the primary by default). */
  async redisCommand(args: string[], port = this.redis.port, timeoutMs = 1000): Promise<RespValue> {
    return redisCommand(port, args, { timeoutMs })
  }

  async bootRedis(): Promise<void> {
    const [primary, ...replicas] = this.#ctx.state.redis
    if (!primary) return
    await this.#spawnRedis(primary)
    for (const r of replicas) await this.#spawnRedis(r, primary.port)
  }

  async waitForRedis(timeoutMs: number): Promise<void> {
    const [primary, ...replicas] = this.#ctx.state.redis
    if (!primary) return
    await this.#waitForPing(primary.port, timeoutMs)
    for (const r of replicas) {
      await waitFor(
        `${r.name} to replicate`,
        async () => {
          const reply = await redisCommand(r.port, ['INFO', 'replication'], { timeoutMs: 500 })
          return typeof reply === 'string' && parseInfo(reply).master_link_status === 'up' ? true : undefined
        },
        { timeoutMs, intervalMs: 100 },
      )
    }
  }

  /** Starts the fixed Redis endpoint and waits until a PING through it answers. */
  async bootRedisEndpoint(timeoutMs: number): Promise<void> {
    const e = this.#ctx.state.redisEndpoint
    if (!e) return
    writeFileSync(e.scriptPath, ENDPOINT_SOURCE, { mode: 0o644 })
    const pid = await spawnServer({
      cmd: process.execPath,
      args: [e.scriptPath, join(this.#ctx.baseDir, 'lab.json'), String(e.port)],
      cwd: e.dir,
      logPath: e.logPath,
    })
    e.pid = pid
    this.#ctx.recordPid(pid)
    await waitFor(
      'the Redis endpoint to answer PING',
      async () => {
        if (!isProcessAlive(pid))
          throw fatal(`the Redis endpoint exited; see ${e.logPath}\n${tail(e.logPath)}`)
        return (await redisCommand(e.port, ['PING'], { timeoutMs: 500 })) === 'PONG' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
  }

  async bootSentinels(): Promise<void> {
    const s = this.#ctx.state.sentinel
    const primary = this.#ctx.state.redis[0]
    if (!s || !primary) return
    for (const sentinel of s.sentinels) {
      writeFileSync(
        sentinel.confPath,
        sentinelConf({
          port: sentinel.port,
          dir: sentinel.dir,
          masterPort: primary.port,
          quorum: s.quorum,
          name: s.masterName,
        }),
      )
      const pid = await spawnServer({
        cmd: 'redis-sentinel',
        args: [sentinel.confPath],
        cwd: sentinel.dir,
        logPath: sentinel.logPath,
      })
      sentinel.pid = pid
      this.#ctx.recordPid(pid)
    }
  }

  /** Every sentinel knows the master, its replica and the other sentinels. */
  async waitForSentinels(timeoutMs: number): Promise<void> {
    const s = this.#ctx.state.sentinel
    if (!s) return
    const replicas = this.#ctx.state.redis.length - 1
    for (const sentinel of s.sentinels) {
      await waitFor(
        `sentinel ${sentinel.name} to see the master, ${replicas} replica(s) and ${s.sentinels.length - 1} other sentinel(s)`,
        async () => {
          const reply = await redisCommand(sentinel.port, ['SENTINEL', 'master', s.masterName], {
            timeoutMs: 500,
          })
          if (!Array.isArray(reply)) return undefined
          const info = pairs(reply)
          const ok =
            Number(info['num-slaves']) >= replicas &&
            Number(info['num-other-sentinels']) >= s.sentinels.length - 1 &&
            !String(info.flags).includes('down')
          return ok ? true : undefined
        },
        { timeoutMs, intervalMs: 200 },
      )
    }
  }

  #redisPrimaryNode(): RedisNodeState | undefined {
    const name = this.#ctx.state.redisPrimary
    return this.#ctx.state.redis.find((r) => r.name === name) ?? this.#ctx.state.redis[0]
  }

  #requireRedisPrimary(): RedisNodeState {
    const node = this.#redisPrimaryNode()
    if (!node) throw new Error('this lab has no Redis (start it with redis: true)')
    return node
  }

  async #spawnRedis(node: RedisNodeState, replicaOf?: number): Promise<void> {
    const pid = await spawnServer({
      cmd: 'redis-server',
      args: redisArgs({ port: node.port, dir: node.dir, ...(replicaOf !== undefined ? { replicaOf } : {}) }),
      cwd: node.dir,
      logPath: node.logPath,
    })
    node.pid = pid
    this.#ctx.recordPid(pid)
  }

  async #killRedisNode(node: RedisNodeState): Promise<void> {
    if (!node.pid) return
    signalTree(node.pid, 'SIGKILL', this.#ctx.baseDir)
    // A stopped process does not die of SIGKILL until it is continued on some kernels' views: be sure.
    try {
      process.kill(node.pid, 'SIGCONT')
    } catch {
      // gone
    }
    const left = await waitForExit([node.pid], 5000)
    if (left.length > 0) throw new Error(`${node.name} (pid ${node.pid}) did not die`)
    await waitUntilRefused(`the killed ${node.name}`, [node.port])
    this.#ctx.log(`killed ${node.name} (pid ${node.pid})`)
    delete node.pid
    this.#ctx.save()
  }

  async #waitForPing(port: number, timeoutMs: number): Promise<void> {
    await waitFor(
      `Redis on port ${port} to answer PING`,
      async () => {
        const reply = await redisCommand(port, ['PING'], { timeoutMs: 500 })
        if (reply instanceof RespError) return undefined
        return reply === 'PONG' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
  }

  /** Each server's role, the endpoint's target, each sentinel's master. */
  async status(): Promise<{
    redis: RedisStatusLine[]
    redisEndpoint?: { port: number; pid: number | undefined; target: string; ok: boolean }
    sentinels: Array<{ name: string; port: number; pid: number | undefined; ok: boolean; master: string }>
  }> {
    const state = this.#ctx.state
    const redis: RedisStatusLine[] = []
    for (const r of state.redis) {
      let role = 'down'
      let detail = ''
      try {
        const reply = await redisCommand(r.port, ['INFO', 'replication'], { timeoutMs: 500 })
        if (typeof reply === 'string') {
          const info = parseInfo(reply)
          role = info.role ?? 'unknown'
          if (role === 'slave') {
            role = 'replica'
            detail = `of ${info.master_host}:${info.master_port} link ${info.master_link_status}`
          } else {
            detail = `${info.connected_slaves ?? 0} replica(s)`
          }
        }
      } catch (err) {
        role = r.pid && isProcessAlive(r.pid) ? 'not answering' : 'down'
        detail = errorMessage(err)
      }
      redis.push({ name: r.name, port: r.port, pid: r.pid, role, detail })
    }
    const sentinels = []
    for (const s of state.sentinel?.sentinels ?? []) {
      let master = ''
      let ok = false
      try {
        const reply = await redisCommand(
          s.port,
          ['SENTINEL', 'get-master-addr-by-name', state.sentinel!.masterName],
          {
            timeoutMs: 500,
          },
        )
        if (Array.isArray(reply)) {
          master = `${String(reply[0])}:${String(reply[1])}`
          ok = true
        }
      } catch (err) {
        master = errorMessage(err)
      }
      sentinels.push({ name: s.name, port: s.port, pid: s.pid, ok, master })
    }
    const endpoint = state.redisEndpoint
    if (!endpoint) return { redis, sentinels }
    return {
      redis,
      sentinels,
      redisEndpoint: {
        port: endpoint.port,
        pid: endpoint.pid,
        target: this.#redisPrimaryNode()?.name ?? '-',
        ok: await redisCommand(endpoint.port, ['PING'], { timeoutMs: 500 })
          .then((r) => r === 'PONG')
          .catch(() => false),
      },
    }
  }
}

function pairs(list: RespValue[]): Record<string, RespValue> {
  const out: Record<string, RespValue> = {}
  for (let i = 0; i + 1 < list.length; i += 2) out[String(list[i])] = list[i + 1] ?? null
  return out
}
