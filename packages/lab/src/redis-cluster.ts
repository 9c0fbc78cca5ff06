/**
 * Redis Cluster: 3 masters + 3 replicas on 127.0.0.1 (`startLab({ redisCluster: true })`), formed
 * by hand (CLUSTER SET-CONFIG-EPOCH, ADDSLOTSRANGE, MEET, REPLICATE) so that the roles are
 * known in advance: cluster0..2 are the masters, cluster3..5 their replicas. Its chaos verbs fail
 * one master over (CLUSTER FAILOVER on its replica) or kill it.
 */
import { join } from 'node:path'
import { HOST, REDIS_CLUSTER_DEFAULTS, redisClusterArgs } from './config.js'
import type { LabContext } from './context.js'
import type { PortAllocator } from './ports.js'
import { spawnServer } from './procs.js'
import { parseInfo, RespError, type RespValue, redisCommand } from './resp.js'
import type { RedisClusterNodeState } from './state.js'
import { errorMessage, isProcessAlive, signalTree, waitFor, waitForExit, waitUntilRefused } from './util.js'

export const SLOTS = 16_384

/** One node as `lab.redisCluster` shows it: startup nodes for ioredis.Cluster. */
export interface RedisClusterNode {
  name: string
  host: string
  port: number
  /** As of the lab's last look (boot, failover verbs); a node that is down keeps its last role. */
  role: 'master' | 'replica'
  /** Absent while the node is down. */
  pid?: number
}

export interface RedisClusterInfo {
  nodes: RedisClusterNode[]
}

/** What failoverRedisClusterMaster() / killRedisClusterMaster() did. */
export interface RedisClusterFailover {
  /** The master that was failed over (now a replica, or down after a kill). */
  master: string
  /** Its replica, now the master of the same slots. */
  promoted: string
  /** Slot ranges that moved, e.g. [[0, 5460]]. */
  slots: Array<[number, number]>
  seconds: number
}

/** One line of CLUSTER NODES. */
export interface ClusterNodesEntry {
  id: string
  port: number
  flags: string[]
  /** The master's ID for a replica, '-' for a master. */
  masterId: string
  linkState: string
  slots: Array<[number, number]>
}

/** Parses the text of CLUSTER NODES (importing/migrating slot entries are ignored). */
export function parseClusterNodes(text: string): ClusterNodesEntry[] {
  const out: ClusterNodesEntry[] = []
  for (const line of text.split('\n')) {
    const cols = line.trim().split(' ')
    if (cols.length < 8) continue
    const [id, addr, flags, masterId, , , , linkState, ...slotCols] = cols
    // "127.0.0.1:7000@17000[,hostname]"
    const port = Number(addr!.split('@')[0]!.split(':').pop())
    const slots: Array<[number, number]> = []
    for (const col of slotCols) {
      if (col.startsWith('[')) continue
      const [a, b] = col.split('-')
      slots.push([Number(a), Number(b ?? a)])
    }
    out.push({ id: id!, port, flags: flags!.split(','), masterId: masterId!, linkState: linkState!, slots })
  }
  return out
}

/** Splits the slots evenly among `masters` masters, as redis-cli --cluster create does. */
export function slotRanges(masters: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let i = 0; i < masters; i++) {
    const start = Math.floor((i * SLOTS) / masters)
    const end = Math.floor(((i + 1) * SLOTS) / masters) - 1
    out.push([start, end])
  }
  return out
}

export class RedisClusterPart {
  readonly #ctx: LabContext

  constructor(ctx: LabContext) {
    this.#ctx = ctx
  }

  /**
   * Adds the cluster's nodes to a state being planned (folders, two ports each). Masters
   * first: cluster0..(masters-1), then their replicas in the same order.
   */
  static async plan(
    baseDir: string,
    ports: PortAllocator,
    mkdir: (path: string) => string,
    config: { masters?: number; replicasPerMaster?: number; nodeTimeoutMs?: number } = {},
  ): Promise<{ masters: number; nodeTimeoutMs: number; nodes: RedisClusterNodeState[] }> {
    const masters = config.masters ?? REDIS_CLUSTER_DEFAULTS.masters
    const total = masters * (1 + (config.replicasPerMaster ?? REDIS_CLUSTER_DEFAULTS.replicasPerMaster))
    const nodes: RedisClusterNodeState[] = []
    for (let i = 0; i < total; i++) {
      const name = `cluster${i}`
      const dir = mkdir(join(baseDir, name))
      const [port, busPort] = await ports.many(2)
      nodes.push({
        name,
        port: port!,
        busPort: busPort!,
        dir,
        logPath: join(dir, 'redis.log'),
        role: i < masters ? 'master' : 'replica',
      })
    }
    return { masters, nodeTimeoutMs: config.nodeTimeoutMs ?? REDIS_CLUSTER_DEFAULTS.nodeTimeoutMs, nodes }
  }

  get #cluster(): NonNullable<LabContext['state']['redisCluster']> {
    const c = this.#ctx.state.redisCluster
    if (!c) throw new Error('this lab has no Redis Cluster (start it with redisCluster: true)')
    return c
  }

  get info(): RedisClusterInfo | undefined {
    const c = this.#ctx.state.redisCluster
    if (!c) return undefined
    return {
      nodes: c.nodes.map((n) => ({
        name: n.name,
        host: HOST,
        port: n.port,
        role: n.role,
        ...(n.pid && isProcessAlive(n.pid) ? { pid: n.pid } : {}),
      })),
    }
  }

  /** Starts every node (not yet a cluster). */
  async boot(): Promise<void> {
    if (!this.#ctx.state.redisCluster) return
    for (const node of this.#cluster.nodes) await this.#spawn(node)
  }

  /**
   * Forms the cluster and waits until every node says `cluster_state:ok`, every replica's link
   * is up and every node agrees on the masters.
   */
  async form(timeoutMs: number): Promise<void> {
    if (!this.#ctx.state.redisCluster) return
    const { nodes } = this.#cluster
    for (const node of nodes) await this.#waitForPing(node, timeoutMs)
    const masters = nodes.filter((n) => n.role === 'master')
    const replicas = nodes.filter((n) => n.role === 'replica')
    // Distinct config epochs before the nodes meet (as redis-cli does): no collision to resolve.
    for (const [i, m] of masters.entries()) {
      await this.#command(m, ['CLUSTER', 'SET-CONFIG-EPOCH', String(i + 1)])
    }
    for (const [i, range] of slotRanges(masters.length).entries()) {
      await this.#command(masters[i]!, ['CLUSTER', 'ADDSLOTSRANGE', String(range[0]), String(range[1])])
    }
    const first = nodes[0]!
    for (const n of nodes.slice(1)) {
      await this.#command(first, ['CLUSTER', 'MEET', HOST, String(n.port), String(n.busPort)])
    }
    for (const n of nodes) n.id = String(await this.#command(n, ['CLUSTER', 'MYID']))
    this.#ctx.save()
    // Every node must know every other before a replica can name its master.
    await waitFor(
      `every Redis Cluster node to know all ${nodes.length}`,
      async () => {
        for (const n of nodes) {
          const view = parseClusterNodes(String(await this.#command(n, ['CLUSTER', 'NODES'])))
          const known = view.filter((e) => !e.flags.includes('handshake') && !e.flags.includes('noaddr'))
          if (known.length < nodes.length) return undefined
        }
        return true
      },
      { timeoutMs, intervalMs: 50 },
    )
    for (const [i, r] of replicas.entries()) {
      const master = masters[i % masters.length]!
      await this.#command(r, ['CLUSTER', 'REPLICATE', master.id!])
    }
    await this.#waitHealthy(timeoutMs)
  }

  /**
   * Fails over one master with `CLUSTER FAILOVER` on its replica (a coordinated switch: the
   * master pauses its clients until the replica has caught up, so nothing acknowledged is lost).
   * `target`: a node name (`'cluster0'`), else a key whose slot's master is taken; default: the
   * first master. Resolves when the replica is master, the old master replicates from it, and
   * every node says `cluster_state:ok` and agrees on the masters.
   */
  async failoverMaster(target?: string, opts: { timeoutMs?: number } = {}): Promise<RedisClusterFailover> {
    this.#ctx.refresh()
    const started = performance.now()
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
    const { master, replica, slots } = await this.#resolve(target)
    let asked = 0
    await waitFor(
      `${replica.name} to take over from ${master.name}`,
      async () => {
        // A manual failover that the master did not coordinate in time is abandoned by Redis
        // (after 5 s): ask again.
        if (Date.now() - asked > 6000) {
          await this.#command(replica, ['CLUSTER', 'FAILOVER'])
          asked = Date.now()
        }
        return (await this.#role(replica)) === 'master' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
    await this.#waitHealthy(timeoutMs)
    return this.#done('failed over', master, replica, slots, started)
  }

  /**
   * kill -9 of one master (chosen as for failoverMaster()); its replica is promoted by the
   * cluster itself once the master has not answered for `cluster-node-timeout` (2 s) and the
   * other masters agree. Resolves when the replica is master and every live node says
   * `cluster_state:ok`. The killed node stays down: restartRedisClusterNode() brings it back
   * (as a replica of the new master).
   */
  async killMaster(target?: string, opts: { timeoutMs?: number } = {}): Promise<RedisClusterFailover> {
    this.#ctx.refresh()
    const started = performance.now()
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
    const { master, replica, slots } = await this.#resolve(target)
    await this.#kill(master)
    await waitFor(
      `${replica.name} to be promoted after ${master.name} was killed`,
      async () => ((await this.#role(replica)) === 'master' ? true : undefined),
      { timeoutMs, intervalMs: 100 },
    )
    await this.#waitHealthy(timeoutMs)
    return this.#done('killed', master, replica, slots, started)
  }

  /** kill -9 of any node of the cluster, by name. */
  async killNode(name: string): Promise<void> {
    this.#ctx.refresh()
    await this.#kill(this.#node(name))
  }

  /**
   * Starts a node that is down again, on its port and folder. It reads its nodes.conf, rejoins,
   * and (its slots having moved to a node with a newer epoch) becomes a replica of their new
   * master. Resolves once the cluster is healthy again with it.
   */
  async restartNode(name: string, opts: { timeoutMs?: number } = {}): Promise<void> {
    this.#ctx.refresh()
    const node = this.#node(name)
    const timeoutMs = opts.timeoutMs ?? this.#ctx.readyTimeoutMs
    if (node.pid && isProcessAlive(node.pid)) await this.#kill(node)
    await this.#spawn(node)
    await this.#waitForPing(node, timeoutMs)
    await this.#waitHealthy(timeoutMs)
  }

  /** Whether a name belongs to this cluster. */
  has(name: string): boolean {
    return this.#ctx.state.redisCluster?.nodes.some((n) => n.name === name) ?? false
  }

  /** Per node: role and a detail line, for status(). */
  async status(): Promise<
    Array<{ name: string; port: number; pid: number | undefined; role: string; detail: string }>
  > {
    const out = []
    for (const n of this.#ctx.state.redisCluster?.nodes ?? []) {
      let role = 'down'
      let detail = ''
      try {
        const info = parseInfo(String(await this.#command(n, ['CLUSTER', 'INFO'], 500)))
        const r = await this.#role(n, 500)
        role = r === 'slave' ? 'replica' : r
        detail = `cluster_state:${info.cluster_state}`
      } catch (err) {
        role = n.pid && isProcessAlive(n.pid) ? 'not answering' : 'down'
        detail = errorMessage(err)
      }
      out.push({ name: n.name, port: n.port, pid: n.pid, role, detail })
    }
    return out
  }

  async #resolve(target: string | undefined): Promise<{
    master: RedisClusterNodeState
    replica: RedisClusterNodeState
    slots: Array<[number, number]>
  }> {
    const view = await this.#view()
    const masters = view.filter(
      (e) => e.flags.includes('master') && !e.flags.includes('fail') && e.slots.length > 0,
    )
    let entry: ClusterNodesEntry | undefined
    if (target === undefined) {
      entry = masters.sort((a, b) => this.#byPort(a.port).name.localeCompare(this.#byPort(b.port).name))[0]
    } else if (this.has(target)) {
      const node = this.#node(target)
      entry = masters.find((e) => e.port === node.port)
      if (!entry) throw new Error(`${target} is not a master of the Redis Cluster now`)
    } else {
      const slot = await this.#command(this.#live()[0]!, ['CLUSTER', 'KEYSLOT', target])
      if (typeof slot !== 'number') throw new Error(`CLUSTER KEYSLOT ${target}: ${String(slot)}`)
      entry = masters.find((e) => e.slots.some(([a, b]) => slot >= a && slot <= b))
      if (!entry) throw new Error(`no master serves slot ${slot} (key ${target})`)
    }
    if (!entry) throw new Error('the Redis Cluster has no master')
    const master = this.#byPort(entry.port)
    // Which node replicates it, from the replicas' own word (INFO replication), not gossip.
    let replica: RedisClusterNodeState | undefined
    for (const n of this.#live()) {
      if (n === master) continue
      const info = parseInfo(String(await this.#command(n, ['INFO', 'replication'])))
      if (
        info.role === 'slave' &&
        Number(info.master_port) === master.port &&
        info.master_link_status === 'up'
      ) {
        replica = n
        break
      }
    }
    if (!replica) throw new Error(`master ${master.name} has no live replica to take over`)
    return { master, replica, slots: entry.slots }
  }

  #done(
    what: string,
    master: RedisClusterNodeState,
    replica: RedisClusterNodeState,
    slots: Array<[number, number]>,
    started: number,
  ): RedisClusterFailover {
    const seconds = Math.round((performance.now() - started) / 100) / 10
    this.#ctx.log(`redis cluster: ${what} ${master.name}; ${replica.name} is master (${seconds} s)`)
    return { master: master.name, promoted: replica.name, slots, seconds }
  }

  /**
   * Every live node says `cluster_state:ok` and sees the same topology: each live node a master
   * serving slots or a replica of a named master, none flagged failing or still in handshake
   * (gossip takes a moment to carry a new role to every node); as many masters as at the start;
   * every replica's own link to its master is up. Records the roles.
   */
  async #waitHealthy(timeoutMs: number): Promise<void> {
    const expected = this.#cluster.masters
    const masterPorts = await waitFor(
      'the Redis Cluster to be ok and agree on its topology on every node',
      async () => {
        const live = this.#live()
        let agreed: string | undefined
        let topology: Array<{ port: number; master?: number }> = []
        for (const n of live) {
          const info = parseInfo(String(await this.#command(n, ['CLUSTER', 'INFO'])))
          if (info.cluster_state !== 'ok') return undefined
          const view = parseClusterNodes(String(await this.#command(n, ['CLUSTER', 'NODES'])))
          topology = []
          for (const node of live) {
            const e = view.find((x) => x.port === node.port)
            if (!e || e.flags.some((f) => ['fail', 'fail?', 'handshake', 'noaddr'].includes(f)))
              return undefined
            if (e.flags.includes('master')) {
              if (e.slots.length === 0) return undefined // not yet told it is a replica
              topology.push({ port: e.port })
            } else {
              const master = view.find((x) => x.id === e.masterId)
              if (!master) return undefined
              topology.push({ port: e.port, master: master.port })
            }
          }
          const text = JSON.stringify(topology)
          if (agreed === undefined) agreed = text
          else if (agreed !== text) return undefined
        }
        const masters = topology.filter((t) => t.master === undefined).map((t) => t.port)
        if (masters.length !== expected) return undefined
        for (const t of topology) {
          if (t.master === undefined) continue
          const info = parseInfo(String(await this.#command(this.#byPort(t.port), ['INFO', 'replication'])))
          if (
            info.role !== 'slave' ||
            info.master_link_status !== 'up' ||
            Number(info.master_port) !== t.master
          )
            return undefined
        }
        return new Set(masters)
      },
      { timeoutMs, intervalMs: 100 },
    )
    for (const n of this.#cluster.nodes)
      if (n.pid && isProcessAlive(n.pid)) n.role = masterPorts.has(n.port) ? 'master' : 'replica'
    this.#ctx.save()
  }

  /** CLUSTER NODES from the first live node that answers. */
  async #view(): Promise<ClusterNodesEntry[]> {
    let lastError: unknown
    for (const n of this.#live()) {
      try {
        return parseClusterNodes(String(await this.#command(n, ['CLUSTER', 'NODES'])))
      } catch (err) {
        lastError = err
      }
    }
    throw new Error(`no Redis Cluster node answered CLUSTER NODES: ${errorMessage(lastError)}`)
  }

  async #role(node: RedisClusterNodeState, timeoutMs = 1000): Promise<string> {
    const reply = await this.#command(node, ['ROLE'], timeoutMs)
    return Array.isArray(reply) ? String(reply[0]) : 'unknown'
  }

  /** One command; an error reply (-ERR ...) rejects, naming the command and the node. */
  async #command(node: RedisClusterNodeState, args: string[], timeoutMs = 1000): Promise<RespValue> {
    const reply = await redisCommand(node.port, args, { timeoutMs })
    if (reply instanceof RespError) throw new Error(`${args.join(' ')} on ${node.name}: ${reply.message}`)
    return reply
  }

  #live(): RedisClusterNodeState[] {
    return this.#cluster.nodes.filter((n) => n.pid !== undefined && isProcessAlive(n.pid))
  }

  #node(name: string): RedisClusterNodeState {
    const node = this.#cluster.nodes.find((n) => n.name === name)
    if (!node)
      throw new Error(
        `no such Redis Cluster node: ${name} (${this.#cluster.nodes.map((n) => n.name).join(', ')})`,
      )
    return node
  }

  #byPort(port: number): RedisClusterNodeState {
    const node = this.#cluster.nodes.find((n) => n.port === port)
    if (!node) throw new Error(`port ${port} is not a node of this lab's Redis Cluster`)
    return node
  }

  async #spawn(node: RedisClusterNodeState): Promise<void> {
    const pid = await spawnServer({
      cmd: 'redis-server',
      args: redisClusterArgs({
        port: node.port,
        busPort: node.busPort,
        dir: node.dir,
        nodeTimeoutMs: this.#cluster.nodeTimeoutMs,
      }),
      cwd: node.dir,
      logPath: node.logPath,
    })
    node.pid = pid
    this.#ctx.recordPid(pid)
  }

  async #kill(node: RedisClusterNodeState): Promise<void> {
    if (!node.pid) return
    signalTree(node.pid, 'SIGKILL', this.#ctx.baseDir)
    const left = await waitForExit([node.pid], 5000)
    if (left.length > 0) throw new Error(`${node.name} (pid ${node.pid}) did not die`)
    await waitUntilRefused(`the killed ${node.name}`, [node.port, node.busPort])
    this.#ctx.log(`killed ${node.name} (pid ${node.pid})`)
    delete node.pid
    this.#ctx.save()
  }

  async #waitForPing(node: RedisClusterNodeState, timeoutMs: number): Promise<void> {
    await waitFor(
      `${node.name} (port ${node.port}) to answer PING`,
      async () => {
        if (node.pid && !isProcessAlive(node.pid))
          throw Object.assign(new Error(`${node.name} exited; see ${node.logPath}`), { fatal: true })
        return (await this.#command(node, ['PING'], 500)) === 'PONG' ? true : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
  }
}
