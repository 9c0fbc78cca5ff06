import type { LabState } from './state.js'

/**
 * What each part of a lab (the Postgres cluster, Redis, Redis Cluster) gets from the lab's
 * lifecycle: the state as lab.json holds it, logging, and the bookkeeping of the processes it
 * starts. `state` is re-read from lab.json by `refresh()` (another process may have changed the
 * lab), so a part reads it again after every refresh and never keeps a reference across one.
 */
export interface LabContext {
  readonly baseDir: string
  /** The current state (replaced by refresh()). */
  readonly state: LabState
  /** Re-reads lab.json. */
  refresh(): void
  /** Writes lab.json. */
  save(): void
  log(line: string): void
  /** The default timeout of every wait and chaos verb (the lab's readyTimeoutMs). */
  readonly readyTimeoutMs: number
  /** Records a PID the lab started (and saves). */
  recordPid(pid: number): void
}
