import { parseLsn } from './topology.js'

/**
 * Timelines: where each ancestor timeline of the primary's ended (its history), and the
 * detection of a cluster that went back to a lower timeline than one this router had written
 * on (the writes acknowledged there are gone).
 */

/** Timeline `timeline` ended at `endLsn`, where the next one began. */
export interface TimelineSwitch {
  timeline: number
  endLsn: bigint
}

/** What the router knows of the cluster's timeline now. */
export interface TimelineInfo {
  /** The confirmed primary's timeline, as last measured (kept during a failover); null before one is known. */
  timeline: number | null
  /** `pg_control_system().system_identifier` of the confirmed primary; null before it is known. */
  systemId: string | null
  /** The switch points of `timeline`'s ancestors, oldest first; null when unknown. */
  history: readonly TimelineSwitch[] | null
}

/**
 * A confirmed primary on a lower timeline than one this router had acknowledged writes on:
 * Patroni (3.0.2, fixed upstream in PR #2689) handed leadership back to an old primary after
 * a new one was promoted, and the writes acknowledged on the higher timeline are gone.
 * Times are epoch ms.
 */
export interface TimelineRegressionEvent {
  /** The primary now (confirmed by SQL). */
  member: string
  /** Its timeline. */
  timeline: number
  /** The highest timeline this router had acknowledged writes on. */
  lostTimeline: number
  /** The primary this router wrote to on `lostTimeline`. */
  lostMember: string
  /**
   * Writes this router acknowledged on timelines above `timeline` happened between
   * `writesFrom` and `writesUntil` (measured to the monitor's polling period): they may be
   * lost. Other clients' writes in that window too.
   */
  writesFrom: number
  writesUntil: number
  detectedAt: number
}

/** A timeline history file's text (`1\t0/4027C20\tno recovery target specified`); null when malformed. */
export function parseHistoryFile(text: unknown): TimelineSwitch[] | null {
  if (typeof text !== 'string') return null
  const out: TimelineSwitch[] = []
  for (const line of text.split('\n')) {
    const t = line.trim()
    if (t === '' || t.startsWith('#')) continue
    const [tl, lsn] = t.split(/\s+/)
    const timeline = Number(tl)
    const endLsn = parseLsn(lsn)
    if (!Number.isSafeInteger(timeline) || timeline < 1 || endLsn === null) return null
    out.push({ timeline, endLsn })
  }
  return ordered(out)
}

/** Patroni's `GET /history` (`[[1, 67271712, "reason", "time", "leader"], ...]`); null when malformed. */
export function parsePatroniHistory(json: unknown): TimelineSwitch[] | null {
  if (!Array.isArray(json)) return null
  const out: TimelineSwitch[] = []
  for (const line of json) {
    if (!Array.isArray(line)) return null
    const [tl, lsn] = line as unknown[]
    if (typeof tl !== 'number' || !Number.isSafeInteger(tl) || tl < 1) return null
    if (typeof lsn !== 'number' || !Number.isSafeInteger(lsn) || lsn < 0) return null
    out.push({ timeline: tl, endLsn: BigInt(lsn) })
  }
  return ordered(out)
}

/** Strictly increasing timelines and positions, else null (not a history). */
function ordered(list: TimelineSwitch[]): TimelineSwitch[] | null {
  for (let i = 1; i < list.length; i++) {
    if (list[i]!.timeline <= list[i - 1]!.timeline || list[i]!.endLsn < list[i - 1]!.endLsn) return null
  }
  return list
}

/**
 * The history of timeline `timeline`: `list` when it describes it (its last switch is the one
 * from `timeline - 1`, or it is empty for timeline 1), else null: another timeline's, or
 * stale (Patroni updates its copy a loop after a promotion). A timeline whose parent is not
 * `timeline - 1` (ids skipped by an abandoned branch) is taken as unknown.
 */
export function historyOf(
  list: readonly TimelineSwitch[] | null,
  timeline: number,
): readonly TimelineSwitch[] | null {
  if (list === null) return null
  if (timeline === 1) return list.length === 0 ? list : null
  return list[list.length - 1]?.timeline === timeline - 1 ? list : null
}

/** Something that acknowledges writes: the monitor's members (`writes` counts them). */
interface Writer {
  name: string
  writes: number
}

/**
 * Which timelines this router acknowledged writes on, and when; and whether a newly confirmed
 * primary is on a lower timeline than one of them.
 *
 * Writes are counted on the member (`Member.writes`, one increment per acknowledged write,
 * nothing else on the hot path) and attributed to the writer's timeline when the monitor
 * samples them: after each poll of the writer (whose timeline it measures) and when the
 * writer is suspected. A primary's timeline cannot change while it stays primary, so every
 * write between two samples belongs to the timeline measured.
 */
export class TimelineWatch {
  /** Writes acknowledged, by timeline: the first and last sample times that saw them. */
  readonly #written = new Map<number, { member: string; from: number; until: number }>()
  #baseline: { member: Writer; writes: number; at: number } | null = null
  readonly #open: TimelineRegressionEvent[] = []

  /** `member` was confirmed as the writer: its writes count from now. */
  confirmed(member: Writer, now = Date.now()): void {
    this.#baseline = { member, writes: member.writes, at: now }
  }

  /**
   * The writer's writes so far belong to `timeline` (null: not known yet, so the sample is
   * kept for later). Writes since the last sample happened after it.
   */
  sample(member: Writer, timeline: number | null, now = Date.now()): void {
    const b = this.#baseline
    if (b === null || b.member !== member || timeline === null) return
    if (member.writes !== b.writes) {
      const w = this.#written.get(timeline)
      if (w) w.until = now
      else this.#written.set(timeline, { member: member.name, from: b.at, until: now })
      if (this.#written.size > 32) this.#written.delete(Math.min(...this.#written.keys()))
    }
    b.writes = member.writes
    b.at = now
  }

  /**
   * The confirmed writer `member` is on `timeline`: a regression event when this router had
   * acknowledged writes on a higher timeline (reported once; those records are dropped).
   */
  check(member: Writer, timeline: number, now = Date.now()): TimelineRegressionEvent | null {
    let lost: { timeline: number; member: string } | null = null
    let from = Number.POSITIVE_INFINITY
    let until = 0
    for (const [tl, w] of this.#written) {
      if (tl <= timeline) continue
      if (lost === null || tl > lost.timeline) lost = { timeline: tl, member: w.member }
      from = Math.min(from, w.from)
      until = Math.max(until, w.until)
      this.#written.delete(tl)
    }
    if (lost === null) return null
    const e: TimelineRegressionEvent = {
      member: member.name,
      timeline,
      lostTimeline: lost.timeline,
      lostMember: lost.member,
      writesFrom: from,
      writesUntil: until,
      detectedAt: now,
    }
    this.#open.push(e)
    return e
  }

  /** Regressions detected and not acknowledged yet, oldest first. */
  get unacknowledged(): readonly TimelineRegressionEvent[] {
    return this.#open
  }

  /** Forgets the regressions detected so far; returns how many there were. */
  acknowledge(): number {
    const n = this.#open.length
    this.#open.length = 0
    return n
  }
}
