import { configError, ResilientError } from '@resilient/core'
import { type Cluster, Command, Redis } from 'ioredis'
import type { CacheRedisOptions } from './options.js'

/** A Redis or Cluster client of ioredis 5. */
export type RedisClient = Redis | Cluster

/** Options the cache always sets on a client it creates: the reasons a Redis call can hang. */
export const FORCED_CLIENT_OPTIONS = [
  'commandTimeout',
  'enableOfflineQueue',
  'autoResendUnfulfilledCommands',
  'maxRetriesPerRequest',
  'lazyConnect',
  'keyPrefix',
] as const

export function isRedisClient(value: unknown): value is RedisClient {
  const v = value as Record<string, unknown> | null
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.sendCommand === 'function' &&
    typeof v.duplicate === 'function' &&
    typeof v.isCluster === 'boolean'
  )
}

/** Reconnect quickly, but never in a tight loop: 50, 100, 200 ... capped at 1 s, with jitter. */
export function reconnectDelay(times: number): number {
  const base = Math.min(1000, 50 * 2 ** Math.min(times - 1, 5))
  return Math.round(base / 2 + Math.random() * (base / 2))
}

/** Largest `commandTimeout` accepted on a client you pass in. */
export function maxClientCommandTimeout(redisTimeoutMs: number): number {
  return Math.max(1000, redisTimeoutMs * 10)
}

/**
 * Refuses a caller's client whose settings let a command wait without bound, naming the
 * option to change. The cache's own timer would still bound the caller, but commands would
 * pile up inside the client (the offline queue) and be replayed later (SETs after a DEL).
 */
export function checkCallerClient(client: RedisClient, redisTimeoutMs: number): void {
  const max = maxClientCommandTimeout(redisTimeoutMs)
  if (client.isCluster) {
    const opts = (client as Cluster).options
    if (opts.enableOfflineQueue !== false) {
      throw configError('cache.redis (your Cluster) enableOfflineQueue', 'false')
    }
    checkNodeOptions(
      (opts.redisOptions ?? {}) as Record<string, unknown>,
      'cache.redis (your Cluster) redisOptions',
      max,
    )
    return
  }
  const opts = (client as Redis).options
  if (opts.enableOfflineQueue !== false) {
    throw configError('cache.redis (your client) enableOfflineQueue', 'false')
  }
  checkNodeOptions(opts as Record<string, unknown>, 'cache.redis (your client)', max)
}

function checkNodeOptions(opts: Record<string, unknown>, where: string, max: number): void {
  const t = opts.commandTimeout
  if (typeof t !== 'number' || !(t > 0) || t > max) {
    throw configError(`${where} commandTimeout`, `a number of ms from 1 to ${max}`, t)
  }
  if (opts.autoResendUnfulfilledCommands !== false) {
    throw configError(`${where} autoResendUnfulfilledCommands`, 'false', opts.autoResendUnfulfilledCommands)
  }
  if (opts.maxRetriesPerRequest === null) {
    throw configError(`${where} maxRetriesPerRequest`, 'a number (0 is best), not null', null)
  }
}

/** Creates the client the cache owns, with every wait bounded. */
export function createOwnedClient(options: CacheRedisOptions, redisTimeoutMs: number): Redis {
  const o = options as Record<string, unknown>
  for (const key of FORCED_CLIENT_OPTIONS) {
    if (o[key] !== undefined) {
      throw configError(`cache.redis.${key}`, 'not set: the cache controls it (see cache.redisTimeoutMs)')
    }
  }
  const sentinel = Array.isArray(o.sentinels)
  if (sentinel && (typeof o.name !== 'string' || o.name.length === 0)) {
    throw configError('cache.redis.name', 'the Sentinel master name (a non-empty string)', o.name)
  }
  return new Redis({
    connectTimeout: Math.max(1000, redisTimeoutMs * 10),
    retryStrategy: reconnectDelay,
    ...(sentinel
      ? {
          sentinelRetryStrategy: reconnectDelay,
          sentinelCommandTimeout: Math.max(500, redisTimeoutMs * 5),
          failoverDetector: true,
        }
      : {}),
    ...options,
    // No ioredis commandTimeout here: it arms and clears a timer for every command (measured
    // +8 µs wall per MGET on loopback, bench/cache section A). Every command the cache sends on
    // this client is bounded by the cache's DeadlineGuard (one timer per cache) or by bounded().
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    lazyConnect: false,
  })
}

/**
 * A second connection for pub/sub, owned by the cache. Its SUBSCRIBE is not under the cache's
 * deadline timer, so it keeps an ioredis `commandTimeout` (the caller client's, or
 * `redisTimeoutMs` for a client the cache created).
 */
export function createSubscriber(client: RedisClient, redisTimeoutMs: number): RedisClient {
  if (client.isCluster) {
    return (client as Cluster).duplicate(undefined, { enableOfflineQueue: false, lazyConnect: false })
  }
  return (client as Redis).duplicate({
    commandTimeout: (client as Redis).options.commandTimeout ?? redisTimeoutMs,
    enableOfflineQueue: false,
    autoResubscribe: false,
    lazyConnect: false,
  })
}

/**
 * Runs `fn` and rejects with E_TIMEOUT after `ms`, without an AbortController: this is on
 * the hot path. The timer starts before the command is handed to ioredis, so that with
 * equal timeouts ours fires first and is counted as a timeout.
 */
export function bounded<T>(fn: () => Promise<T>, ms: number, operation: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError(ms, operation)), ms)
    let work: Promise<T>
    try {
      work = fn()
    } catch (err) {
      clearTimeout(timer)
      reject(err)
      return
    }
    work.then(
      (v) => {
        clearTimeout(timer)
        resolve(v)
      },
      (err) => {
        clearTimeout(timer)
        reject(err)
      },
    )
  })
}

interface PendingOp {
  deadline: number
  /** Rejects the operation's promise (run()); for a command, rejects the command. */
  reject: (err: unknown) => void
  /** The ioredis command of send(): settled once `isResolved` (a reply) or rejected by us. */
  command: Command | undefined
  done: boolean
  operation: string
}

function isSettled(op: PendingOp): boolean {
  return op.done || op.command?.isResolved === true
}

function noop(): void {}

/**
 * The cache's own timer guard for Redis operations that all share one timeout: a FIFO of
 * deadlines with a single timer armed for the oldest (equal timeouts make FIFO order
 * deadline order). Per operation this costs an array push instead of a timer; the timer
 * rejects each operation at its own deadline, to the millisecond. Settled operations leave
 * the head of the queue at once (and drop their reject function), so the queue holds about
 * the operations in flight, not every operation of the last `ms`.
 */
export class DeadlineGuard {
  readonly #ms: number
  #queue: PendingOp[] = []
  #head = 0
  #timer: NodeJS.Timeout | undefined

  constructor(ms: number) {
    this.#ms = ms
  }

  /**
   * Sends an ioredis command and returns its own promise: no promise, closure or timer of
   * ours per command. At its deadline a command still without a reply is rejected with
   * E_TIMEOUT through ioredis's public `Command#reject` (what ioredis's own `commandTimeout`
   * does). Settled commands leave the head of the queue on the next send.
   */
  send<T>(client: RedisClient, command: Command, operation: string): Promise<T> {
    const q = this.#queue
    let head = this.#head
    while (head < q.length && isSettled(q[head]!)) head++
    if (head === q.length && head > 0) {
      q.length = 0
      head = 0
    }
    this.#head = head
    const op: PendingOp = {
      deadline: performance.now() + this.#ms,
      reject: noop,
      command,
      done: false,
      operation,
    }
    q.push(op)
    if (this.#timer === undefined) this.#arm(op.deadline)
    return (client as Redis).sendCommand(command) as Promise<T>
  }

  run<T>(fn: () => Promise<T>, operation: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const op: PendingOp = {
        deadline: performance.now() + this.#ms,
        reject,
        command: undefined,
        done: false,
        operation,
      }
      this.#queue.push(op)
      if (this.#timer === undefined) this.#arm(op.deadline)
      let work: Promise<T>
      try {
        work = fn()
      } catch (err) {
        this.#settled(op)
        reject(err)
        return
      }
      work.then(
        (v) => {
          if (op.done) return
          this.#settled(op)
          resolve(v)
        },
        (err) => {
          if (op.done) return
          this.#settled(op)
          reject(err)
        },
      )
    })
  }

  /** Marks `op` settled; if it was the oldest, drops it and the settled ones behind it. */
  #settled(op: PendingOp): void {
    op.done = true
    op.reject = noop
    const q = this.#queue
    let head = this.#head
    if (q[head] !== op) return
    head++
    while (head < q.length && isSettled(q[head]!)) head++
    if (head === q.length) {
      q.length = 0
      head = 0
    }
    this.#head = head
  }

  #arm(deadline: number): void {
    this.#timer = setTimeout(this.#sweep, Math.max(0, Math.ceil(deadline - performance.now())))
  }

  #sweep = (): void => {
    this.#timer = undefined
    const now = performance.now()
    const q = this.#queue
    let head = this.#head
    while (head < q.length) {
      const op = q[head]!
      if (isSettled(op)) {
        head++
        continue
      }
      if (op.deadline > now + 0.5) break
      const reject = op.reject
      op.done = true
      op.reject = noop
      head++
      if (op.command) op.command.reject(timeoutError(this.#ms, op.operation))
      else reject(timeoutError(this.#ms, op.operation))
    }
    if (head >= q.length) {
      q.length = 0
      this.#head = 0
      return
    }
    if (head > 1024) {
      this.#queue = q.slice(head)
      head = 0
    }
    this.#head = head
    this.#arm(this.#queue[head]!.deadline)
  }

  /** Rejects nothing further and drops the timer (close()). */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Operations held in the queue (in flight, or settled behind an older one in flight). */
  get size(): number {
    return this.#queue.length - this.#head
  }
}

function timeoutError(ms: number, operation: string): ResilientError {
  return new ResilientError('E_TIMEOUT', `redis ${operation} timed out after ${Math.round(ms)} ms`, {
    noStack: true,
    details: { timeoutMs: ms, operation },
  })
}

/**
 * `MGET keys...` as ioredis's generated `client.mget()` builds it (utf8 replies, the client's
 * key prefix and friendly error stacks), for DeadlineGuard#send. undefined when the client
 * auto-pipelines: then `client.mget()` must be used, so that the command joins the pipeline.
 */
export function mgetCommand(client: RedisClient, keys: string[]): Command | undefined {
  const options = client.options as {
    keyPrefix?: string
    showFriendlyErrorStack?: boolean
    enableAutoPipelining?: boolean
  }
  if (options.enableAutoPipelining) return undefined
  return new Command('mget', keys, {
    replyEncoding: 'utf8',
    keyPrefix: options.keyPrefix,
    errorStack: options.showFriendlyErrorStack ? new Error() : undefined,
  })
}

/** `true` when commands can be written now (no queueing anywhere). */
export function isReady(client: RedisClient): boolean {
  return client.status === 'ready'
}

/**
 * Lua scripts. KEYS of one call always share a hash slot: the key is wrapped in `{...}`.
 * Stored value format: `<logical expiry, epoch ms>:<payload>`.
 */
export const SCRIPTS = {
  /** KEYS: value, generation, lease. ARGV: now, lease token, lease ttl. -> [value, generation, gotLease] */
  lookupLease: {
    numberOfKeys: 3,
    lua: `local v = redis.call('GET', KEYS[1])
local g = redis.call('GET', KEYS[2])
local fresh = false
if v then
  local e = tonumber(string.match(v, '^(%d+):'))
  if e and e > tonumber(ARGV[1]) then fresh = true end
end
local lease = 0
if not fresh then
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then lease = 1 end
end
return {v, g, lease}`,
  },
  /** KEYS: value, generation, lease. ARGV: expected generation ('' = none), data, px, lease token ('' = none). -> 1 stored, 0 raced */
  fill: {
    numberOfKeys: 3,
    lua: `local g = redis.call('GET', KEYS[2]) or ''
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
if g ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`,
  },
  /** KEYS: value, generation. ARGV: generation ttl, channel, message. Bumps the generation so that in-flight fills lose. */
  invalidate: {
    numberOfKeys: 2,
    lua: `redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local n = redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return n`,
  },
  /** KEYS: value, generation. ARGV: data, px, generation ttl, channel, message. A write-through set: in-flight fills lose. */
  write: {
    numberOfKeys: 2,
    lua: `redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1`,
  },
  /** KEYS: lease. ARGV: token. Releases a lease this process holds. */
  release: {
    numberOfKeys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`,
  },
  /** KEYS: tag set. ARGV: member, px. Adds the key to the tag's set and keeps the set alive at least px. */
  tagAdd: {
    numberOfKeys: 1,
    lua: `redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`,
  },
} as const

export type ScriptName = keyof typeof SCRIPTS

const COMMAND_PREFIX = 'resilientCache_'

/** Defines the scripts on a client once (ioredis sends EVALSHA and falls back to EVAL). */
export function defineScripts(client: RedisClient): void {
  const c = client as unknown as Record<string, unknown>
  for (const [name, s] of Object.entries(SCRIPTS)) {
    if (typeof c[COMMAND_PREFIX + name] !== 'function') {
      client.defineCommand(COMMAND_PREFIX + name, { numberOfKeys: s.numberOfKeys, lua: s.lua })
    }
  }
}

export function runScript(
  client: RedisClient,
  name: ScriptName,
  keys: string[],
  args: (string | number)[],
): Promise<unknown> {
  const fn = (client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[
    COMMAND_PREFIX + name
  ]!
  return fn.call(client, ...keys, ...args)
}
