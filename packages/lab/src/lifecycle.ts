/**
 * The lab's lifecycle, whatever it runs: its folder, its state file (lab.json, re-read before
 * and written after every change so that several processes can drive one lab), the PIDs it
 * started, the exit hooks and the watchdog that end it when its owner goes away, and teardown.
 * The parts (the Postgres cluster, Redis, Redis Cluster) reach it as a LabContext.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { randomPassword, scopeFor } from './config.js'
import type { LabContext } from './context.js'
import { defaultRegistryDir, type PortAllocator } from './ports.js'
import { checkReachable, killLabSync, type RunAs, teardown, WATCHDOG_SOURCE } from './procs.js'
import { type LabState, readState, STATE_VERSION, writeState } from './state.js'

/** Lifecycles of labs this process owns, killed synchronously if the process exits. */
const owned = new Set<LabLifecycle>()
let hooksInstalled = false

function onProcessExit(): void {
  for (const lab of owned) lab.killNow()
}

function onSignal(signal: NodeJS.Signals): void {
  onProcessExit()
  removeHooks()
  // Re-raise so that the default action (or whoever else listens) still happens.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
}

const signalHandlers: Partial<Record<NodeJS.Signals, () => void>> = {}

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  process.on('exit', onProcessExit)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => onSignal(sig)
    signalHandlers[sig] = handler
    process.on(sig, handler)
  }
}

function removeHooks(): void {
  if (!hooksInstalled) return
  hooksInstalled = false
  process.off('exit', onProcessExit)
  for (const [sig, handler] of Object.entries(signalHandlers)) {
    if (handler) process.off(sig, handler)
    delete signalHandlers[sig as NodeJS.Signals]
  }
}

export class LabLifecycle implements LabContext {
  readonly baseDir: string
  readonly readyTimeoutMs: number
  #state: LabState
  readonly #log: (line: string) => void
  #down = false

  constructor(
    state: LabState,
    opts: { log?: (line: string) => void; readyTimeoutMs?: number; owned?: boolean } = {},
  ) {
    this.#state = state
    this.baseDir = state.baseDir
    this.#log = opts.log ?? (() => {})
    this.readyTimeoutMs = opts.readyTimeoutMs ?? 90_000
    if (opts.owned) {
      owned.add(this)
      installHooks()
    }
  }

  get state(): LabState {
    return this.#state
  }

  log(line: string): void {
    this.#log(line)
  }

  /**
   * Re-reads lab.json: another process may have changed the lab (a test worker that restarted
   * a member of a lab started in globalSetup, or a CLI chaos verb), and every Lab saves after
   * each change, so the file is the truth about PIDs and the Redis primary.
   */
  refresh(): void {
    if (this.#down) return
    try {
      const disk = readState(this.baseDir)
      if (disk.baseDir === this.baseDir && disk.scope === this.#state.scope) this.#state = disk
    } catch {
      // no file (removed by down() elsewhere): keep what we know
    }
  }

  /** Writes lab.json (unless the lab is gone). */
  save(): void {
    if (!existsSync(this.baseDir)) return
    writeState(this.#state)
  }

  recordPid(pid: number): void {
    if (!this.#state.startedPids.includes(pid)) this.#state.startedPids.push(pid)
    this.save()
  }

  /** Every PID this lab started (servers, watchdog), alive or not. */
  pids(): number[] {
    this.refresh()
    return [...this.#state.startedPids]
  }

  /**
   * The watchdog: a detached `node <lab>/watchdog.cjs` that ends the lab when its owner dies,
   * even by SIGKILL (see procs.ts).
   */
  startWatchdog(): void {
    // A file rather than `node -e`, so that ps shows a readable command line.
    const script = join(this.baseDir, 'watchdog.cjs')
    writeFileSync(script, WATCHDOG_SOURCE, { mode: 0o644 })
    const child = spawn(process.execPath, [script, String(process.pid), this.baseDir, defaultRegistryDir()], {
      cwd: this.baseDir,
      detached: true,
      stdio: 'ignore',
    })
    child.on('error', () => {})
    child.unref()
    if (child.pid) {
      this.#state.watchdogPid = child.pid
      this.recordPid(child.pid)
    }
  }

  setBootSeconds(seconds: number): void {
    this.#state.bootSeconds = seconds
    this.save()
  }

  /** Stops every process of the lab by PID, removes its folder and port reservations. Idempotent. */
  async down(): Promise<void> {
    if (this.#down) return
    this.refresh()
    this.#down = true
    const alive = await teardown(this.#state, this.#log)
    owned.delete(this)
    if (owned.size === 0) removeHooks()
    if (alive.length > 0) throw new Error(`lab down: PIDs still alive: ${alive.join(' ')}`)
    this.#log(`lab ${this.baseDir} is down`)
  }

  /** Synchronous kill -9 of everything (process exit hooks). */
  killNow(): void {
    if (this.#down) return
    this.refresh()
    this.#down = true
    killLabSync(this.#state)
    owned.delete(this)
  }
}

/**
 * The lab folder: `baseDir` (missing or empty: down() removes it) or a fresh mkdtemp folder
 * under os.tmpdir(). Handed to `runAs` (the postgres user, as root) when it runs servers, which
 * must be able to reach it. Returns its real path.
 */
export function prepareLabFolder(baseDirOption: string | undefined, runAs: RunAs | undefined): string {
  let baseDir: string
  if (baseDirOption) {
    baseDir = resolve(baseDirOption)
    if (existsSync(join(baseDir, 'lab.json'))) {
      throw new Error(`${baseDir} already holds a lab (lab.json); stop it first or pick another folder`)
    }
    // down() removes the whole folder: never adopt one that holds anything.
    if (existsSync(baseDir) && readdirSync(baseDir).length > 0) {
      throw new Error(`${baseDir} is not empty; the lab needs a folder of its own (down() removes it)`)
    }
    mkdirSync(baseDir, { recursive: true, mode: 0o755 })
  } else {
    baseDir = mkdtempSync(join(tmpdir(), 'resilient-lab-'))
  }
  baseDir = realpathSync(baseDir)
  if (runAs) {
    try {
      checkReachable(baseDir, runAs)
    } catch (err) {
      rmSync(baseDir, { recursive: true, force: true })
      throw err
    }
    chownSync(baseDir, runAs.uid, runAs.gid)
  }
  return baseDir
}

/** A new lab's state before any part is planned: identity, credentials, no servers yet. */
export function newLabState(
  baseDir: string,
  ports: PortAllocator,
  opts: { persistent: boolean; synchronousMode: boolean; failsafeMode: boolean },
): LabState {
  return {
    version: STATE_VERSION,
    baseDir,
    scope: scopeFor(baseDir),
    createdAt: new Date().toISOString(),
    ...(opts.persistent ? {} : { ownerPid: process.pid }),
    synchronousMode: opts.synchronousMode,
    ...(opts.failsafeMode ? { failsafeMode: true } : {}),
    postgres: {
      user: 'postgres',
      password: randomPassword(randomBytes(24)),
      database: 'postgres',
      replicationUser: 'replicator',
      replicationPassword: randomPassword(randomBytes(24)),
    },
    members: [],
    redis: [],
    startedPids: [],
    ports: ports.reserved,
  }
}
