import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { connect } from 'node:net'

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `probe` until it returns something other than `undefined`, or throws after `timeoutMs`
 * with `what` in the message (and the last probe error as `cause`).
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  { timeoutMs, intervalMs = 200 }: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await probe()
      if (value !== undefined) return value
      lastError = undefined
    } catch (err) {
      // An error marked `fatal` (e.g. "the server exited") ends the wait at once.
      if ((err as { fatal?: unknown } | null)?.fatal === true) throw err
      lastError = err
    }
    if (Date.now() >= deadline) {
      const detail = lastError instanceof Error ? `: ${lastError.message}` : ''
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`, { cause: lastError })
    }
    await sleep(intervalMs)
  }
}

/**
 * True when `pid` names a live process. A zombie (exited, not yet reaped) counts as dead: on
 * machines whose PID 1 never reaps orphans, a killed postmaster stays a zombie for ever and
 * `kill(pid, 0)` keeps succeeding.
 */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // "pid (comm) S ..." where comm may contain spaces and parentheses: read after the last ')'.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    // No /proc (not Linux) or the process vanished between the two calls.
    return isProcessAliveNoProc(pid)
  }
}

function isProcessAliveNoProc(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * True when the process's working directory lies inside `dir`. Every process the lab starts
 * (and every postmaster, which chdirs to its data folder) runs inside the lab folder, so this
 * guards kills against PID reuse: a PID read from an old state file is only signalled when it
 * still belongs to this lab. Returns undefined when it cannot tell (no /proc, no permission).
 */
export function processRunsIn(pid: number, dir: string): boolean | undefined {
  try {
    const cwd = readlinkSync(`/proc/${pid}/cwd`).replace(/ \(deleted\)$/, '')
    return cwd === dir || cwd.startsWith(dir.endsWith('/') ? dir : `${dir}/`)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return isProcessAlive(pid) ? undefined : false
    return undefined
  }
}

/**
 * Sends `signal` to the process group led by `pid` (the lab starts every server as a group
 * leader) and to `pid` itself; only when the leader is gone or verifiably ours (see
 * processRunsIn). Never throws.
 */
export function signalTree(pid: number | undefined, signal: NodeJS.Signals, ownDir: string): boolean {
  if (pid === undefined || !Number.isInteger(pid) || pid <= 1) return false
  const mine = processRunsIn(pid, ownDir)
  if (mine === false && isProcessAliveNoProc(pid)) {
    // The leader exists and runs elsewhere: the PID was reused by someone else. Leave it alone.
    // (A zombie leader has no cwd; its group may still hold our processes, handled below.)
    if (!isZombie(pid)) return false
  }
  let sent = false
  try {
    process.kill(-pid, signal)
    sent = true
  } catch {
    // No such group (the leader was never a group leader, or everything is gone).
  }
  if (mine !== false) {
    try {
      process.kill(pid, signal)
      sent = true
    } catch {
      // already gone
    }
  }
  return sent
}

/**
 * Sends `signal` to `pid` alone (not its group), only when it verifiably runs inside `ownDir`
 * or its working directory cannot be read (see processRunsIn). Never throws.
 */
export function signalPid(pid: number, signal: NodeJS.Signals, ownDir: string): boolean {
  if (!Number.isInteger(pid) || pid <= 1) return false
  if (processRunsIn(pid, ownDir) === false) return false
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}

/** The state letter of /proc/<pid>/stat ('R', 'S', 'T' stopped, 'Z'...), or undefined when gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  } catch {
    return undefined
  }
}

/**
 * Every live descendant of `pid` (children, their children, ...), read from /proc (parent PIDs),
 * parents before their children. [] when there is no /proc.
 */
export function descendants(pid: number): number[] {
  let entries: string[]
  try {
    entries = readdirSync('/proc')
  } catch {
    return []
  }
  const children = new Map<number, number[]>()
  for (const entry of entries) {
    const child = Number(entry)
    if (!Number.isInteger(child) || child <= 0) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
    } catch {
      continue // exited meanwhile
    }
    // "pid (comm) S ppid ...": read after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (rest[0] === 'Z' || rest[0] === 'X') continue
    const parent = Number(rest[1])
    const list = children.get(parent)
    if (list) list.push(child)
    else children.set(parent, [child])
  }
  const out: number[] = []
  const queue = [pid]
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      out.push(child)
      queue.push(child)
    }
  }
  return out
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z'
  } catch {
    return false
  }
}

/** Waits until none of `pids` is alive (zombies count as dead). Returns the ones still alive. */
export async function waitForExit(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs
  let alive = pids.filter(isProcessAlive)
  while (alive.length > 0 && Date.now() < deadline) {
    await sleep(25)
    alive = alive.filter(isProcessAlive)
  }
  return alive
}

/**
 * Waits until this process has reaped those of `pids` that are its own children: Node reaps
 * an exited child asynchronously, and until then the PID still answers `kill(pid, 0)` as a
 * zombie. Processes that belong to someone else are not waited for (only their parent can
 * reap them).
 */
export async function waitForReaped(pids: number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  const ownZombie = (pid: number) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return Number(rest[1]) === process.pid
    } catch {
      return false // gone, or no /proc
    }
  }
  let pending = pids.filter(ownZombie)
  while (pending.length > 0 && Date.now() < deadline) {
    await sleep(10)
    pending = pending.filter(ownZombie)
  }
}

/** Reads the first line (the PID) of a postmaster.pid file, if there is a live postmaster. */
export function readPostmasterPid(
  dataDir: string,
): { pid: number; shmKey?: number; shmId?: number } | undefined {
  let text: string
  try {
    text = readFileSync(`${dataDir}/postmaster.pid`, 'utf8')
  } catch {
    return undefined
  }
  const lines = text.split('\n')
  const pid = Number.parseInt(lines[0] ?? '', 10)
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  // Line 7: "  <shmem key>  <shmem id>" (PostgreSQL's LOCK_FILE_LINE_SHMEM_KEY).
  const shm = (lines[6] ?? '').trim().split(/\s+/)
  const shmKey = Number.parseInt(shm[0] ?? '', 10)
  const shmId = Number.parseInt(shm[1] ?? '', 10)
  return {
    pid,
    ...(Number.isInteger(shmKey) ? { shmKey } : {}),
    ...(Number.isInteger(shmId) ? { shmId } : {}),
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * Dead is not yet closed: until the kernel has torn a killed server's listening socket down, a
 * connect can still land in the old backlog and be reset (ECONNRESET instead of ECONNREFUSED,
 * seen in CI for Redis and for Patroni's REST API). Resolves once every port refuses.
 */
export async function waitUntilRefused(what: string, ports: number[]): Promise<void> {
  await waitFor(
    `port(s) ${ports.join(', ')} of ${what} to refuse connections`,
    async () => {
      for (const port of ports) if (!(await portRefuses(port))) return undefined
      return true
    },
    { timeoutMs: 5000, intervalMs: 20 },
  )
}

/** True when a TCP connect to 127.0.0.1:port is refused (nothing listens there). */
export function portRefuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    const done = (refused: boolean) => {
      socket.destroy()
      resolve(refused)
    }
    socket.setTimeout(500, () => done(false))
    socket.once('connect', () => done(false))
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED'))
  })
}

/** An Error that ends a waitFor() at once (e.g. "the server exited"). */
export function fatal(message: string): Error {
  return Object.assign(new Error(message), { fatal: true })
}

/** The last `lines` lines of a file ('' when unreadable): for errors about a server that exited. */
export function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}
