import {
  abortError,
  checkArray,
  checkBoolean,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  configError,
  type Disposable,
  Emitter,
  optional,
  ResilientError,
  toError,
  withTimeout,
} from '@resilient/core'
import { Client } from 'undici'
import { parsePatroniHistory, type TimelineSwitch } from '../timeline.js'
import type {
  DiscoveredMember,
  Discovery,
  DiscoveryErrorEvent,
  DiscoveryResult,
  MemberRole,
} from './types.js'

/** TLS settings for the Patroni REST API (or a proxy in front of it). */
export interface PatroniTlsOptions {
  /** CA certificate(s) (PEM) that signed the server certificate. @default the Node.js root store */
  ca?: string | Buffer | Array<string | Buffer>
  /** Client certificate (PEM), for `verify_client: required`. */
  cert?: string | Buffer
  /** Client private key (PEM). Never shown in errors or `util.inspect`. */
  key?: string | Buffer
  /** Verify the server certificate. @default true */
  rejectUnauthorized?: boolean
  /** SNI / certificate host name to check, when it differs from the endpoint host. */
  servername?: string
}

/** Basic auth sent with each request (Patroni does not need it for GET /cluster; a proxy may). */
export interface PatroniAuthOptions {
  username: string
  password: string
}

export interface PatroniDiscoveryOptions {
  /**
   * Patroni REST API base URLs, e.g. `http://10.0.0.1:8008`. `GET <endpoint>/cluster` is
   * polled; a path prefix (`https://proxy/patroni/`) is kept. Credentials in a URL are
   * taken out of it and sent as Basic auth.
   */
  endpoints: string[]
  /** Bound on one endpoint's answer: connect + headers + body. @default 1000 */
  timeoutMs?: number
  /** Answers larger than this are cut off and count as a failure of that endpoint. @default 1048576 */
  maxBodyBytes?: number
  tls?: PatroniTlsOptions
  auth?: PatroniAuthOptions
  /**
   * The Patroni `scope` (cluster name) every endpoint must belong to. An endpoint of another
   * cluster (a copy-paste in the endpoint list, a recycled address) is refused: an event, and
   * the next endpoint is asked. @default the scope of the first endpoint that answers
   */
  scope?: string
}

export const DEFAULT_PATRONI_DISCOVERY_OPTIONS = Object.freeze({
  timeoutMs: 1_000,
  maxBodyBytes: 1_048_576,
})

const FIELD = 'patroni'

interface Endpoint {
  /** Redacted (no credentials), as shown in events and results. */
  source: string
  origin: string
  /** `<prefix>/`: `cluster`, `patroni` and `history` are asked under it. */
  base: string
  path: string
  client: Client
  /** Its scope was checked since it last failed (GET /patroni, or a `scope` in /cluster). */
  scopeChecked: boolean
  /** Failed on its last attempt: tried after the others. */
  suspect: boolean
  /** Order among suspects: the one that failed longest ago goes first. */
  failedAt: number
}

/** Patroni role names of 3.x and 4.x. */
export function mapPatroniRole(role: string): MemberRole {
  switch (role) {
    case 'leader':
    case 'master':
    case 'primary':
      return 'primary'
    case 'replica':
    case 'sync_standby':
    case 'quorum_standby':
    case 'standby_leader':
      return 'replica'
    default:
      return 'unknown'
  }
}

class PatroniDiscovery implements Discovery {
  readonly #endpoints: Endpoint[]
  readonly #timeoutMs: number
  readonly #maxBodyBytes: number
  readonly #headers: Record<string, string>
  readonly #errors = new Emitter<DiscoveryErrorEvent>()
  #lastGood: Endpoint | undefined
  #closed = false
  /** The scope every endpoint must have: configured, else the first one seen. */
  #scope: string | undefined
  readonly #scopeFrom: string

  constructor(
    endpoints: Endpoint[],
    timeoutMs: number,
    maxBodyBytes: number,
    headers: Record<string, string>,
    scope: string | undefined,
  ) {
    this.#endpoints = endpoints
    this.#timeoutMs = timeoutMs
    this.#maxBodyBytes = maxBodyBytes
    this.#headers = headers
    this.#scope = scope
    this.#scopeFrom = scope === undefined ? 'the first one seen' : 'patroni.scope'
  }

  get [Symbol.toStringTag](): string {
    return 'PatroniDiscovery'
  }

  /** The endpoints as shown in events (no credentials). */
  get endpoints(): string[] {
    return this.#endpoints.map((e) => e.source)
  }

  onError = (listener: (e: DiscoveryErrorEvent) => void): Disposable => this.#errors.on(listener)

  /** Last good first, then the healthy ones in the configured order, then suspects (oldest failure first). */
  #order(): Endpoint[] {
    const healthy: Endpoint[] = []
    const suspects: Endpoint[] = []
    for (const e of this.#endpoints) {
      if (e === this.#lastGood && !e.suspect) continue
      ;(e.suspect ? suspects : healthy).push(e)
    }
    suspects.sort((a, b) => a.failedAt - b.failedAt)
    const first = this.#lastGood && !this.#lastGood.suspect ? [this.#lastGood] : []
    return [...first, ...healthy, ...suspects]
  }

  async discover(signal?: AbortSignal): Promise<DiscoveryResult> {
    if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'patroni discovery is closed')
    if (signal?.aborted) throw abortError(signal, 'patroni discovery')
    let lastError: Error | undefined
    const failures: { source: string; message: string }[] = []
    for (const endpoint of this.#order()) {
      try {
        const members = await withTimeout((s) => this.#fetch(endpoint, s!), this.#timeoutMs, {
          signal,
          operation: `GET ${endpoint.source}`,
        })
        endpoint.suspect = false
        this.#lastGood = endpoint
        return { members, source: endpoint.source, at: performance.now() }
      } catch (err) {
        if (signal?.aborted) throw abortError(signal, 'patroni discovery')
        if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'patroni discovery is closed')
        const error = ResilientError.is(err, 'E_DISCOVERY')
          ? err
          : new ResilientError('E_DISCOVERY', `${endpoint.source}: ${describeError(err)}`, {
              cause: err,
              details: { source: endpoint.source },
            })
        endpoint.suspect = true
        endpoint.scopeChecked = false
        endpoint.failedAt = performance.now()
        if (this.#lastGood === endpoint) this.#lastGood = undefined
        lastError = error
        failures.push({ source: endpoint.source, message: error.message })
        this.#errors.emit({ source: endpoint.source, error })
      }
    }
    throw new ResilientError(
      'E_DISCOVERY',
      `no Patroni endpoint answered GET /cluster validly (${failures.length} tried)`,
      { cause: lastError, details: { failures } },
    )
  }

  async #fetch(endpoint: Endpoint, signal: AbortSignal): Promise<DiscoveredMember[]> {
    const json = await this.#getJson(endpoint, 'cluster', signal)
    const members = parseCluster(json, endpoint)
    // A scope in the answer itself is checked every time; else the endpoint's GET /patroni
    // once, until it fails.
    const inline = isObject(json) && typeof json.scope === 'string' ? json.scope : undefined
    if (inline !== undefined) {
      this.#checkScope(endpoint, inline)
    } else if (!endpoint.scopeChecked) {
      const status = await this.#getJson(endpoint, 'patroni', signal, true)
      const p = isObject(status) ? status.patroni : undefined
      const scope = isObject(p) && typeof p.scope === 'string' ? p.scope : undefined
      if (scope !== undefined) this.#checkScope(endpoint, scope)
    }
    endpoint.scopeChecked = true
    return members
  }

  #checkScope(endpoint: Endpoint, scope: string): void {
    if (this.#scope === undefined) this.#scope = scope
    else if (scope !== this.#scope) {
      throw new ResilientError(
        'E_DISCOVERY',
        `${endpoint.source}: Patroni scope '${scope}' is not '${this.#scope}' (${this.#scopeFrom}): refused`,
        { details: { source: endpoint.source, reason: 'scope', scope, expected: this.#scope } },
      )
    }
  }

  /**
   * GET `<base><what>` as JSON, bounded in size. `optional`: a non-200 answer or a body that is
   * not JSON resolves to undefined instead of failing (a proxy that exposes only /cluster).
   */
  async #getJson(endpoint: Endpoint, what: string, signal: AbortSignal, optional = false): Promise<unknown> {
    const res = await endpoint.client.request({
      method: 'GET',
      path: `${endpoint.base}${what}`,
      headers: this.#headers,
      signal,
    })
    const body = res.body
    // Errors after we stop reading (our own destroy, a reset) must not become uncaught.
    body.on('error', ignore)
    try {
      if (res.statusCode !== 200) {
        if (optional) return undefined
        throw discoveryError(endpoint, `HTTP ${res.statusCode}`)
      }
      const declared = Number(res.headers['content-length'])
      if (Number.isFinite(declared) && declared > this.#maxBodyBytes) {
        throw discoveryError(
          endpoint,
          `body of ${declared} bytes exceeds maxBodyBytes (${this.#maxBodyBytes})`,
        )
      }
      const chunks: Buffer[] = []
      let size = 0
      for await (const chunk of body) {
        size += (chunk as Buffer).length
        if (size > this.#maxBodyBytes) {
          throw discoveryError(endpoint, `body exceeds maxBodyBytes (${this.#maxBodyBytes})`)
        }
        chunks.push(chunk as Buffer)
      }
      const text = Buffer.concat(chunks).toString('utf8')
      try {
        return JSON.parse(text)
      } catch (err) {
        if (optional) return undefined
        const type = String(res.headers['content-type'] ?? 'no content-type')
        throw discoveryError(endpoint, `malformed JSON (${type}, ${size} bytes)`, err)
      }
    } finally {
      // Frees the socket on every early exit; a no-op once the body was read to the end.
      if (!body.destroyed) body.destroy()
    }
  }

  /** Patroni `GET /history` from the first endpoint that answers it (last good first). */
  async history(signal?: AbortSignal): Promise<TimelineSwitch[]> {
    if (this.#closed) throw new ResilientError('E_SHUTTING_DOWN', 'patroni discovery is closed')
    let lastError: unknown
    for (const endpoint of this.#order()) {
      if (endpoint.suspect) continue
      try {
        const json = await withTimeout((s) => this.#getJson(endpoint, 'history', s!), this.#timeoutMs, {
          signal,
          operation: `GET ${endpoint.base}history`,
        })
        const list = parsePatroniHistory(json)
        if (list !== null) return list
        lastError = discoveryError(endpoint, 'unexpected /history shape')
      } catch (err) {
        if (signal?.aborted) throw abortError(signal, 'patroni history')
        lastError = err
      }
    }
    throw new ResilientError('E_DISCOVERY', 'no Patroni endpoint answered GET /history', { cause: lastError })
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#errors.clear()
    await Promise.all(this.#endpoints.map((e) => e.client.destroy().catch(() => {})))
  }
}

function ignore(): void {}

function discoveryError(endpoint: Endpoint, reason: string, cause?: unknown): ResilientError {
  return new ResilientError('E_DISCOVERY', `${endpoint.source}: ${reason}`, {
    cause,
    details: { source: endpoint.source },
  })
}

function describeError(err: unknown): string {
  const e = toError(err)
  const code = (e as { code?: unknown }).code
  return typeof code === 'string' && !e.message.includes(code) ? `${e.message} (${code})` : e.message
}

/** Truthiness as Patroni (Python) judges a tag: `bool(tags.get('noloadbalance'))`. */
function truthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0
  if (isObject(v)) return Object.keys(v).length > 0
  return v !== false && v !== null && v !== undefined && v !== 0 && v !== ''
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Validates a `GET /cluster` answer. The answer as a whole is rejected (the next endpoint is
 * tried) when it is not `{ members: [...] }`, when it has no members, or when a member has
 * no name or role. A member without a host is skipped: there is no address to route to
 * (Patroni leaves `host` out while a member has no `conn_url`).
 */
export function parseCluster(json: unknown, endpoint: { source: string }): DiscoveredMember[] {
  const bad = (reason: string) =>
    new ResilientError('E_DISCOVERY', `${endpoint.source}: unexpected /cluster shape: ${reason}`, {
      details: { source: endpoint.source },
    })
  if (!isObject(json)) throw bad('not a JSON object')
  const members = json.members
  if (!Array.isArray(members)) throw bad('members is not an array')
  if (members.length === 0) throw bad('members is empty')
  const out: DiscoveredMember[] = []
  const seen = new Set<string>()
  for (let i = 0; i < members.length; i++) {
    const m: unknown = members[i]
    if (!isObject(m)) throw bad(`members[${i}] is not an object`)
    if (typeof m.name !== 'string' || m.name.length === 0) throw bad(`members[${i}].name is not a string`)
    if (typeof m.role !== 'string') throw bad(`members[${i}].role is not a string`)
    if (seen.has(m.name)) throw bad(`members[${i}].name is a duplicate`)
    seen.add(m.name)
    if (m.host === undefined) continue
    if (typeof m.host !== 'string' || m.host.length === 0) throw bad(`members[${i}].host is not a string`)
    const port = m.port === undefined ? 5432 : m.port
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw bad(`members[${i}].port is not a port number`)
    }
    const lag = m.lag
    const lagBytes = typeof lag === 'number' && Number.isFinite(lag) && lag >= 0 ? lag : null
    if (lag !== undefined && lagBytes === null && lag !== 'unknown') {
      throw bad(`members[${i}].lag is neither bytes nor 'unknown'`)
    }
    const timeline =
      typeof m.timeline === 'number' && Number.isInteger(m.timeline) && m.timeline > 0 ? m.timeline : null
    const member: DiscoveredMember = {
      name: m.name,
      host: m.host,
      port,
      role: mapPatroniRole(m.role),
      state: typeof m.state === 'string' ? m.state : 'unknown',
      lagBytes,
      timeline,
      sync: m.role === 'sync_standby' || m.role === 'quorum_standby',
    }
    if (isObject(m.tags) && truthy(m.tags.noloadbalance)) member.noLoadBalance = true
    out.push(member)
  }
  return out
}

function checkPem(value: unknown, field: string): string | Buffer {
  if (typeof value === 'string' || Buffer.isBuffer(value)) return value
  throw configError(field, 'a PEM string or Buffer', value)
}

/**
 * Discovery through Patroni's `GET /cluster`, trying the endpoints in turn. Options are
 * checked here (E_CONFIG names the field, e.g. `patroni.endpoints[1]`).
 */
export function createPatroniDiscovery(options: PatroniDiscoveryOptions): Discovery {
  const o = checkObject(options, FIELD)
  checkKnownKeys(o, FIELD, ['endpoints', 'timeoutMs', 'maxBodyBytes', 'tls', 'auth', 'scope'])
  const scope = o.scope === undefined ? undefined : checkString(o.scope, `${FIELD}.scope`, { nonEmpty: true })
  const list = checkArray(o.endpoints, `${FIELD}.endpoints`, { nonEmpty: true })
  const timeoutMs = optional(o.timeoutMs, DEFAULT_PATRONI_DISCOVERY_OPTIONS.timeoutMs, (v) =>
    checkNumber(v, `${FIELD}.timeoutMs`, { min: 1, max: 600_000, integer: true }),
  )
  const maxBodyBytes = optional(o.maxBodyBytes, DEFAULT_PATRONI_DISCOVERY_OPTIONS.maxBodyBytes, (v) =>
    checkNumber(v, `${FIELD}.maxBodyBytes`, { min: 64, integer: true }),
  )

  let connect: Record<string, unknown> = {}
  if (o.tls !== undefined) {
    const tls = checkObject(o.tls, `${FIELD}.tls`)
    checkKnownKeys(tls, `${FIELD}.tls`, ['ca', 'cert', 'key', 'rejectUnauthorized', 'servername'])
    if (tls.ca !== undefined) {
      if (Array.isArray(tls.ca)) {
        for (const [i, c] of tls.ca.entries()) checkPem(c, `${FIELD}.tls.ca[${i}]`)
      } else checkPem(tls.ca, `${FIELD}.tls.ca`)
    }
    if (tls.cert !== undefined) checkPem(tls.cert, `${FIELD}.tls.cert`)
    if (tls.key !== undefined) checkPem(tls.key, `${FIELD}.tls.key`)
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      throw configError(
        `${FIELD}.tls.${tls.cert === undefined ? 'cert' : 'key'}`,
        'both cert and key, or neither',
      )
    }
    if (tls.rejectUnauthorized !== undefined)
      checkBoolean(tls.rejectUnauthorized, `${FIELD}.tls.rejectUnauthorized`)
    if (tls.servername !== undefined)
      checkString(tls.servername, `${FIELD}.tls.servername`, { nonEmpty: true })
    connect = { ...tls }
  }

  let auth: { username: string; password: string } | undefined
  if (o.auth !== undefined) {
    const a = checkObject(o.auth, `${FIELD}.auth`)
    checkKnownKeys(a, `${FIELD}.auth`, ['username', 'password'])
    auth = {
      username: checkString(a.username, `${FIELD}.auth.username`),
      password: checkString(a.password, `${FIELD}.auth.password`),
    }
  }

  const seen = new Set<string>()
  const parsed = list.map((raw, i) => {
    const field = `${FIELD}.endpoints[${i}]`
    checkString(raw, field, { nonEmpty: true })
    let url: URL
    try {
      url = new URL(raw as string)
    } catch {
      throw configError(field, 'an http:// or https:// URL', raw)
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw configError(field, 'an http:// or https:// URL', raw)
    }
    if (url.search || url.hash) throw configError(field, 'a URL without ?query or #fragment', raw)
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username)
      const pass = decodeURIComponent(url.password)
      if (auth && (auth.username !== user || auth.password !== pass)) {
        throw configError(field, 'no credentials in the URL when patroni.auth is set')
      }
      auth ??= { username: user, password: pass }
      url.username = ''
      url.password = ''
    }
    const base = url.pathname.endsWith('/') ? url.pathname : `${url.pathname}/`
    const path = `${base}cluster`
    const source = `${url.origin}${path}`
    if (seen.has(source)) throw configError(field, 'no duplicate endpoints')
    seen.add(source)
    return { source, origin: url.origin, base, path, https: url.protocol === 'https:' }
  })

  // Clients are created only once every option is known to be good: nothing to close on E_CONFIG.
  const endpoints: Endpoint[] = parsed.map((p) => {
    return {
      source: p.source,
      origin: p.origin,
      base: p.base,
      path: p.path,
      scopeChecked: false,
      client: new Client(p.origin, {
        connect: { timeout: timeoutMs, ...(p.https ? connect : {}) },
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        keepAliveTimeout: 4_000,
        pipelining: 1,
      }),
      suspect: false,
      failedAt: 0,
    }
  })

  const headers: Record<string, string> = { accept: 'application/json' }
  if (auth) {
    headers.authorization = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`
  }
  return new PatroniDiscovery(endpoints, timeoutMs, maxBodyBytes, headers, scope)
}
