import type { Disposable } from '@resilient/core'
import type { TimelineSwitch } from '../timeline.js'

/**
 * The role of a member as seen by discovery.
 * Patroni 'leader' (and 3.x 'master' / 4.x 'primary') -> 'primary';
 * 'replica' | 'sync_standby' | 'quorum_standby' -> 'replica';
 * 'standby_leader' -> 'replica' (it is read-only). Anything else -> 'unknown'.
 */
export type MemberRole = 'primary' | 'replica' | 'unknown'

export interface DiscoveredMember {
  /** Patroni member name, or `host:port` for static hosts. Stable across polls. */
  name: string
  host: string
  port: number
  role: MemberRole
  /** Patroni state: 'running' | 'streaming' | 'starting' | 'stopped' | ...; static: 'running' */
  state: string
  /** Replication lag in bytes as reported by the source; null when unknown. */
  lagBytes: number | null
  timeline: number | null
  /** Patroni: the member is a synchronous standby. */
  sync: boolean
  /** Patroni tag `noloadbalance`: the member must get no reads. Absent: false. */
  noLoadBalance?: boolean
}

export interface DiscoveryResult {
  members: DiscoveredMember[]
  /** Which endpoint (redacted URL) or 'static' answered. */
  source: string
  /** performance.now() when the answer arrived. */
  at: number
  /** Static discovery: more than one host answered pg_is_in_recovery() = false. Writes must be refused. */
  conflict?: string[]
}

export interface DiscoveryErrorEvent {
  source: string
  error: Error
}

export interface Discovery {
  /**
   * One poll. Tries endpoints in order starting with the last good one; resolves with the
   * first valid answer; rejects with ResilientError E_DISCOVERY (cause: last error) when none
   * answers validly. Honors the signal. Never leaves a rejected promise unhandled.
   */
  discover(signal?: AbortSignal): Promise<DiscoveryResult>
  /**
   * Per-endpoint failures (refused, timeout, HTTP status, HTML, malformed JSON, huge body):
   * an event each; discover() moves on to the next endpoint.
   */
  onError(listener: (e: DiscoveryErrorEvent) => void): Disposable
  /**
   * Optional: the cluster's timeline history as the source knows it (Patroni `GET /history`):
   * each timeline that ended, and where. Rejects when it cannot tell.
   */
  history?(signal?: AbortSignal): Promise<TimelineSwitch[]>
  close(): Promise<void>
}
