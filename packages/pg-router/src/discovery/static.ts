import {
  abortError,
  checkArray,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  configError,
  type Disposable,
  Emitter,
  hideSecret,
  optional,
  ResilientError,
  toError,
  withTimeout,
} from '@resilient/core'
import pg from 'pg'
import type { DiscoveredMember, Discovery, DiscoveryErrorEvent, DiscoveryResult } from './types.js'

/** pg client options for the probe connections: everything but where to connect. */
export type StaticConnectionOptions = Omit<pg.ClientConfig, 'host' | 'port' | 'connectionString' | 'stream'>

export interface StaticHost {
  /** Host name or address. Resolved again by pg for every new connection (no DNS caching here). */
  host: string
  /** @default 5432 */
  port?: number
}

export interface StaticDiscoveryOptions {
  /** The hosts to probe with `SELECT pg_is_in_recovery()`. */
  hosts: StaticHost[]
  /** user, password, database, ssl, ... of the probe connections. @default {} (pg's PG* environment variables) */
  connection?: StaticConnectionOptions
  /** Bound on one host's probe (connect, when needed, + query). @default 1000 */
  timeoutMs?: number
}

export const DEFAULT_STATIC_DISCOVERY_OPTIONS = Object.freeze({
  timeoutMs: 1_000,
})

const PROBE_SQL =
  'SELECT pg_is_in_recovery() AS recovery, ' +
  '(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn'

type ProbeAnswer = { ok: true; recovery: boolean; lsn: bigint | null } | { ok: false; error: Error }

function ignore(): void {}

/** `16/B374D848` -> bytes. null for anything else. */
export function parseLsn(text: unknown): bigint | null {
  if (typeof text !== 'string') return null
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  if (!m) return null
  return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)
}

/** One host: one kept probe connection, replaced after any error. One probe in flight at a time. */
class HostProbe {
  readonly name: string
  readonly host: string
  readonly port: number
  readonly #config: pg.ClientConfig
  readonly #timeoutMs: number
  #client: pg.Client | undefined
  #connected: Promise<void> | undefined
  #inflight: Promise<ProbeAnswer> | undefined
  #closed = false

  constructor(host: string, port: number, config: pg.ClientConfig, timeoutMs: number) {
    this.host = host
    this.port = port
    this.name = `${host}:${port}`
    this.#config = config
    this.#timeoutMs = timeoutMs
  }

  /** Never rejects; bounded by timeoutMs. Concurrent callers share one probe. */
  probe(): Promise<ProbeAnswer> {
    this.#inflight ??= this.#probe().finally(() => {
      this.#inflight = undefined
    })
    return this.#inflight
  }

  async #probe(): Promise<ProbeAnswer> {
    try {
      const row = await withTimeout(
        async () => {
          const client = this.#open()
          await this.#connected
          const res = await client.query<{ recovery: unknown; lsn: unknown }>(PROBE_SQL)
          return res.rows[0]
        },
        this.#timeoutMs,
        { operation: `probe of ${this.name}` },
      )
      if (typeof row?.recovery !== 'boolean') {
        throw new ResilientError('E_DISCOVERY', `${this.name}: unexpected answer to pg_is_in_recovery()`)
      }
      return { ok: true, recovery: row.recovery, lsn: parseLsn(row.lsn) }
    } catch (err) {
      this.#discard()
      const e = toError(err)
      const error = ResilientError.is(e, 'E_DISCOVERY')
        ? e
        : new ResilientError('E_DISCOVERY', `${this.name}: ${describe(e)}`, {
            cause: e,
            details: { source: this.name },
          })
      return { ok: false, error }
    }
  }

  #open(): pg.Client {
    if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'static discovery is closed')
    if (this.#client) return this.#client
    // The password is non-enumerable on #config (hidden from inspect): a spread would drop it.
    const config: pg.ClientConfig = { ...this.#config, host: this.host, port: this.port }
    if (this.#config.password !== undefined)
      hideSecret(Object.assign(config, { password: this.#config.password }), 'password')
    const client = new pg.Client(config)
    // An idle probe connection that dies (57P01 on a failover, a reset) must never crash
    // the process: forget it; the next probe opens a new one (and resolves the name again).
    client.on('error', () => {
      if (this.#client === client) this.#discard()
    })
    client.on('end', () => {
      if (this.#client === client) this.#discard()
    })
    this.#client = client
    const connected = client.connect().then(ignore)
    connected.catch(ignore)
    this.#connected = connected
    return client
  }

  #discard(): void {
    const client = this.#client
    this.#client = undefined
    this.#connected = undefined
    if (client) {
      try {
        client.end().catch(ignore)
      } catch {
        // end() of a client that never connected may throw synchronously on some pg versions.
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#discard()
  }
}

function describe(e: Error): string {
  const code = (e as { code?: unknown }).code
  return typeof code === 'string' && !e.message.includes(code) ? `${e.message} (${code})` : e.message
}

class StaticDiscovery implements Discovery {
  readonly #hosts: HostProbe[]
  readonly #errors = new Emitter<DiscoveryErrorEvent>()
  #closed = false

  constructor(hosts: HostProbe[]) {
    this.#hosts = hosts
  }

  get [Symbol.toStringTag](): string {
    return 'StaticDiscovery'
  }

  get hosts(): string[] {
    return this.#hosts.map((h) => h.name)
  }

  onError = (listener: (e: DiscoveryErrorEvent) => void): Disposable => this.#errors.on(listener)

  async discover(signal?: AbortSignal): Promise<DiscoveryResult> {
    if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'static discovery is closed')
    if (signal?.aborted) throw abortError(signal, 'static discovery')
    const all = Promise.all(this.#hosts.map((h) => h.probe()))
    const answers = signal ? await raceAbort(all, signal) : await all
    if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'static discovery is closed')

    let primaryLsn: bigint | null = null
    const primaries: string[] = []
    for (const [i, a] of answers.entries()) {
      if (a.ok && !a.recovery) {
        primaries.push(this.#hosts[i]!.name)
        primaryLsn = a.lsn
      }
    }
    const members: DiscoveredMember[] = []
    let lastError: Error | undefined
    const failures: { source: string; message: string }[] = []
    for (const [i, a] of answers.entries()) {
      const h = this.#hosts[i]!
      if (!a.ok) {
        lastError = a.error
        failures.push({ source: h.name, message: a.error.message })
        this.#errors.emit({ source: h.name, error: a.error })
        members.push(member(h, 'unknown', 'unreachable', null))
        continue
      }
      let lag: number | null = null
      if (a.recovery && primaries.length === 1 && primaryLsn !== null && a.lsn !== null) {
        const d = primaryLsn - a.lsn
        lag = d > 0n ? Number(d) : 0
      }
      members.push(member(h, a.recovery ? 'replica' : 'primary', 'running', a.recovery ? lag : null))
    }
    if (failures.length === this.#hosts.length) {
      throw new ResilientError(
        'E_DISCOVERY',
        `no host answered pg_is_in_recovery() (${failures.length} tried)`,
        {
          cause: lastError,
          details: { failures },
        },
      )
    }
    const result: DiscoveryResult = { members, source: 'static', at: performance.now() }
    if (primaries.length > 1) result.conflict = primaries
    return result
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#errors.clear()
    await Promise.all(this.#hosts.map((h) => h.close()))
  }
}

function member(
  h: HostProbe,
  role: DiscoveredMember['role'],
  state: string,
  lagBytes: number | null,
): DiscoveredMember {
  return { name: h.name, host: h.host, port: h.port, role, state, lagBytes, timeline: null, sync: false }
}

function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, 'static discovery'))
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}

/**
 * Discovery by asking each host `SELECT pg_is_in_recovery()` over a kept connection.
 * Options are checked here (E_CONFIG names the field, e.g. `hosts[1].port`).
 */
export function createStaticDiscovery(options: StaticDiscoveryOptions): Discovery {
  const o = checkObject(options, 'options')
  checkKnownKeys(o, '', ['hosts', 'connection', 'timeoutMs'])
  const hosts = checkArray(o.hosts, 'hosts', { nonEmpty: true }).map((h, i) => {
    const field = `hosts[${i}]`
    const obj = checkObject(h, field)
    checkKnownKeys(obj, field, ['host', 'port'])
    return {
      host: checkString(obj.host, `${field}.host`, { nonEmpty: true }),
      port: optional(obj.port, 5432, (v) =>
        checkNumber(v, `${field}.port`, { min: 1, max: 65535, integer: true }),
      ),
    }
  })
  const seen = new Set<string>()
  for (const [i, h] of hosts.entries()) {
    const key = `${h.host}:${h.port}`
    if (seen.has(key)) throw configError(`hosts[${i}]`, 'no duplicate host:port')
    seen.add(key)
  }
  const timeoutMs = optional(o.timeoutMs, DEFAULT_STATIC_DISCOVERY_OPTIONS.timeoutMs, (v) =>
    checkNumber(v, 'timeoutMs', { min: 1, max: 600_000, integer: true }),
  )
  const connection: Record<string, unknown> = {
    ...(optional(o.connection, {}, (v) => checkObject(v, 'connection')) as Record<string, unknown>),
  }
  // Object spread drops non-enumerable keys: keep a hidden password given that way (pg-pool style).
  if (isObjectWithPassword(o.connection)) connection.password = o.connection.password
  for (const bad of ['host', 'port', 'connectionString', 'stream']) {
    if (connection[bad] !== undefined) {
      throw configError(`connection.${bad}`, 'no value: the hosts option says where to connect')
    }
  }
  if (connection.password !== undefined && typeof connection.password !== 'function') {
    checkString(connection.password, 'connection.password')
  }
  const config = {
    application_name: 'resilient-pg-router-discovery',
    ...connection,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    keepAlive: true,
  } as pg.ClientConfig
  hideSecret(config, 'password')
  return new StaticDiscovery(hosts.map((h) => new HostProbe(h.host, h.port, config, timeoutMs)))
}

function isObjectWithPassword(v: unknown): v is { password: unknown } {
  return typeof v === 'object' && v !== null && 'password' in v
}
