import type { DiscoveredMember, MemberRole } from './discovery/types.js'
import type { MemberPool } from './member-pool.js'

/** A member as the router tracks it: what discovery said, what we measured, and its pool. */
export interface Member {
  name: string
  host: string
  port: number
  role: MemberRole
  state: string
  timeline: number | null
  sync: boolean
  /** Lag as discovery reported it (Patroni refreshes it once per HA loop). */
  reportedLagBytes: number | null
  /**
   * `pg_last_wal_replay_lsn()` (replicas) or `pg_current_wal_insert_lsn()` (primary) at the last
   * poll. Reset to null when the member's role, timeline or pool generation changes.
   */
  lsn: bigint | null
  /** The timeline `lsn` belongs to (null: unknown, so no session read may rely on it). */
  lsnTimeline: number | null
  /** Bumped on every reset of `lsn`: a poll that started before a reset must not store its answer. */
  lsnEpoch: number
  /** primary LSN - this replica's replay LSN, at our last poll. */
  measuredLagBytes: number | null
  /** No reads until this performance.now() (a connection to it just failed). */
  downUntil: number
  /** Writes acknowledged by this member (counted by the writer gate; sampled by the monitor's TimelineWatch). */
  writes: number
  /** Patroni tag `noloadbalance`: never gets reads. */
  noLoadBalance: boolean
  /**
   * A replica whose timeline is not the confirmed primary's (set by the monitor): no reads
   * until it follows the primary's timeline. Patroni reports such a replica's lag as 0 when
   * its position is "ahead" (an old primary back as a replica), and its data is not the
   * primary's.
   */
  offTimeline: boolean
  pool: MemberPool
  /** Stops reporting this member's pool to metrics. */
  unobserve: () => void
}

/** A member as shown to users (topology(), events). */
export interface MemberView {
  name: string
  host: string
  port: number
  role: MemberRole
  state: string
  timeline: number | null
  lagBytes: number | null
  /** Gets reads right now (replicas) or writes (the primary). */
  healthy: boolean
}

export interface Topology {
  /** The writer, confirmed by `pg_is_in_recovery() = false`; null while none is confirmed. */
  primary: MemberView | null
  replicas: MemberView[]
  /** Members discovery lists that are neither (stopped, starting, unknown role). */
  others: MemberView[]
  /** Epoch ms of the last successful discovery; null before the first. */
  updatedAt: number | null
  /** Which endpoint answered last (redacted), or 'static'. */
  source: string | null
  /** Static discovery: several members claimed to be primary; writes are held. */
  conflict?: string[]
}

/** Replica states in which a Patroni (3.x: running, 4.x: streaming) or static member serves reads. */
const SERVING_STATES: ReadonlySet<string> = new Set(['running', 'streaming'])

export function effectiveLag(m: Member): number | null {
  return m.measuredLagBytes ?? m.reportedLagBytes
}

export interface EligibilityRules {
  maxLagBytes: number
  now: number
  /** Read-your-writes: the replica must have replayed at least this LSN... */
  minLsn?: bigint | null | undefined
  /** ...on this very timeline (null or absent with a minLsn: no replica qualifies). */
  minTimeline?: number | null | undefined
  exclude?: ReadonlySet<string> | undefined
}

/** Whether replica `m` may take a read now under `rules`. */
export function isEligible(m: Member, rules: EligibilityRules): boolean {
  if (m.role !== 'replica' || !SERVING_STATES.has(m.state)) return false
  if (m.downUntil > rules.now || m.offTimeline || m.noLoadBalance) return false
  if (rules.exclude?.has(m.name)) return false
  const lag = effectiveLag(m)
  if (lag === null || lag > rules.maxLagBytes) return false
  if (rules.minLsn != null) {
    if (m.lsn === null || m.lsn < rules.minLsn) return false
    if (rules.minTimeline == null || m.lsnTimeline !== rules.minTimeline) return false
  }
  return true
}

/** Replicas that may take a read now. */
export function eligibleReplicas(members: Iterable<Member>, rules: EligibilityRules): Member[] {
  const out: Member[] = []
  for (const m of members) if (isEligible(m, rules)) out.push(m)
  return out
}

export type ReplicaStrategy = 'round-robin' | 'least-busy'

/** Picks one of `candidates` (non-empty). `counter` advances round robin. */
export function pickReplica(candidates: Member[], strategy: ReplicaStrategy, counter: number): Member {
  if (strategy === 'least-busy') {
    let best = candidates[0]!
    let bestLoad = best.pool.load
    for (let i = 1; i < candidates.length; i++) {
      const m = candidates[i]!
      const load = m.pool.load
      if (load < bestLoad) {
        best = m
        bestLoad = load
      }
    }
    return best
  }
  return candidates[counter % candidates.length]!
}

export function viewOf(m: Member, healthy: boolean): MemberView {
  return {
    name: m.name,
    host: m.host,
    port: m.port,
    role: m.role,
    state: m.state,
    timeline: m.timeline,
    lagBytes: effectiveLag(m),
    healthy,
  }
}

/** Whether a discovery answer changed anything a user would see (roles, states, members). */
export function sameShape(a: readonly DiscoveredMember[], b: readonly DiscoveredMember[]): boolean {
  if (a.length !== b.length) return false
  const key = (m: DiscoveredMember) => `${m.name}|${m.host}|${m.port}|${m.role}|${m.state}|${m.timeline}`
  const sa = a.map(key).sort()
  const sb = b.map(key).sort()
  return sa.every((k, i) => k === sb[i])
}

/** `16/B374D848` -> bigint; null for anything else. */
export function parseLsn(text: unknown): bigint | null {
  if (typeof text !== 'string') return null
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  if (!m) return null
  return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)
}

/** The timeline in a WAL file name (`00000003000000000000000A` -> 3); null for anything else. */
export function timelineOfWalFile(name: unknown): number | null {
  if (typeof name !== 'string' || !/^[0-9A-F]{24}$/i.test(name)) return null
  const tl = Number.parseInt(name.slice(0, 8), 16)
  return tl > 0 ? tl : null
}

/** A timeline id as PostgreSQL returns it (int4, maybe as text); null for anything else. */
export function parseTimeline(v: unknown): number | null {
  const n = typeof v === 'string' && /^[0-9]{1,10}$/.test(v) ? Number(v) : v
  return typeof n === 'number' && Number.isSafeInteger(n) && n > 0 ? n : null
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`
}
