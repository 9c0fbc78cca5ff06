import { execFileSync, spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync, rmSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import { releasePorts } from './ports.js'
import type { LabState } from './state.js'
import {
  descendants,
  isProcessAlive,
  readPostmasterPid,
  signalPid,
  signalTree,
  sleep,
  waitForExit,
  waitForReaped,
} from './util.js'

export interface RunAs {
  uid: number
  gid: number
  user: string
}

/** The postgres user's uid/gid when this process is root (PostgreSQL refuses to run as root). */
export function postgresUser(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined
  let passwd: string
  try {
    passwd = readFileSync('/etc/passwd', 'utf8')
  } catch {
    throw new Error('running as root but /etc/passwd is unreadable: cannot find the postgres user')
  }
  for (const line of passwd.split('\n')) {
    const [user, , uid, gid] = line.split(':')
    if (user === 'postgres') return { uid: Number(uid), gid: Number(gid), user: 'postgres' }
  }
  throw new Error(
    'running as root and there is no "postgres" user (apt-get install -y postgresql-15 creates it)',
  )
}

/**
 * Throws when `runAs` could not reach `dir` (some ancestor lacks the execute bit for it), e.g.
 * a folder under /root or a 0700 mkdtemp folder: etcd and Patroni would die at once.
 */
export function checkReachable(dir: string, runAs: RunAs | undefined): void {
  if (!runAs) return
  let current = dirname(dir)
  for (;;) {
    const st = statSync(current)
    const bit = st.uid === runAs.uid ? 0o100 : st.gid === runAs.gid ? 0o010 : 0o001
    if ((st.mode & bit) === 0) {
      throw new Error(
        `the ${runAs.user} user cannot reach ${dir}: ${current} is not searchable by it ` +
          `(mode ${(st.mode & 0o777).toString(8)}). PostgreSQL refuses to run as root, so the lab runs ` +
          `etcd and Patroni as ${runAs.user}; pick a baseDir it can reach (e.g. under /tmp) or chmod o+x ${current}`,
      )
    }
    const parent = dirname(current)
    if (parent === current) return
    current = parent
  }
}

export interface SpawnSpec {
  cmd: string
  args: string[]
  cwd: string
  logPath: string
  runAs?: RunAs | undefined
  env?: Record<string, string>
}

/**
 * Starts a server as the leader of its own process group (so that it and everything it forks
 * can be signalled at once, and a terminal's Ctrl-C does not reach it), with stdout and stderr
 * appended to `logPath`, and unreferenced so that it never keeps this process alive. Resolves
 * with the PID once the process exists; rejects when it cannot be started at all.
 */
export function spawnServer(spec: SpawnSpec): Promise<number> {
  const fd = openSync(spec.logPath, 'a')
  return new Promise<number>((resolve, reject) => {
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(spec.cmd, spec.args, {
        cwd: spec.cwd,
        detached: true,
        stdio: ['ignore', fd, fd],
        env: spec.env ?? baseEnv(spec.cwd, spec.runAs),
        ...(spec.runAs ? { uid: spec.runAs.uid, gid: spec.runAs.gid } : {}),
      })
    } catch (err) {
      closeSync(fd)
      reject(err)
      return
    }
    child.once('error', (err) => {
      reject(new Error(`could not start ${spec.cmd}: ${err.message}`, { cause: err }))
    })
    child.once('spawn', () => {
      child.unref()
      if (child.pid === undefined) reject(new Error(`could not start ${spec.cmd}`))
      else resolve(child.pid)
    })
  }).finally(() => closeSync(fd))
}

/** A small, explicit environment: no PG... or REDIS... variables of the test process leak into servers. */
export function baseEnv(home: string, runAs?: RunAs): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    TZ: 'UTC',
  }
  if (runAs) {
    env.USER = runAs.user
    env.LOGNAME = runAs.user
  }
  return env
}

/** The PIDs of the servers in a state (not the watchdog), plus the live postmasters. */
export function serverPids(state: LabState): { servers: number[]; patroni: number[]; postmasters: number[] } {
  const patroni = state.members.flatMap((m) => (m.pid ? [m.pid] : []))
  const others = [
    ...(state.etcd?.pid ? [state.etcd.pid] : []),
    ...state.redis.flatMap((r) => (r.pid ? [r.pid] : [])),
    ...(state.sentinel?.sentinels ?? []).flatMap((s) => (s.pid ? [s.pid] : [])),
    ...(state.redisCluster?.nodes ?? []).flatMap((n) => (n.pid ? [n.pid] : [])),
    ...(state.redisEndpoint?.pid ? [state.redisEndpoint.pid] : []),
  ]
  const postmasters = state.members.flatMap((m) => {
    const pm = readPostmasterPid(m.dataDir)
    return pm && isProcessAlive(pm.pid) ? [pm.pid] : []
  })
  return { servers: [...patroni, ...others], patroni, postmasters }
}

/**
 * Kills everything of a lab at once with SIGKILL, synchronously: for process 'exit' and signal
 * handlers, where nothing asynchronous runs any more. The watchdog is left alone: it notices
 * its owner is gone and finishes the job (waits for the deaths, frees shared memory, removes
 * the folder).
 */
export function killLabSync(state: LabState): void {
  const { servers, postmasters } = serverPids(state)
  // Listed first: a postmaster's children lead groups of their own, and once it is dead they
  // are orphans nobody could find; a frozen (SIGSTOPped) one would never notice its death.
  const children = postmasters.flatMap((pm) => descendants(pm))
  const shm = sharedMemoryOf(state)
  for (const pid of servers) signalTree(pid, 'SIGKILL', state.baseDir)
  for (const pid of postmasters) signalTree(pid, 'SIGKILL', state.baseDir)
  for (const pid of children) signalPid(pid, 'SIGKILL', state.baseDir)
  releasePorts(state.baseDir, state.ports)
  // With a live watchdog, the folder stays for it: it needs postmaster.pid to free shared memory.
  if (state.watchdogPid && isProcessAlive(state.watchdogPid)) return
  // No watchdog (a persistent lab): wait briefly, synchronously, for the postmasters to die,
  // then free the shared memory they leave after a SIGKILL.
  const wait = new Int32Array(new SharedArrayBuffer(4))
  for (let i = 0; i < 50 && postmasters.some(isProcessAlive); i++) Atomics.wait(wait, 0, 0, 20)
  freeSharedMemory(shm)
  try {
    rmSync(state.baseDir, { recursive: true, force: true, maxRetries: 2, retryDelay: 20 })
  } catch {
    // best effort
  }
}

/**
 * The orderly teardown used by down(): stops the watchdog, kills every Patroni (so none
 * restarts PostgreSQL), asks every postmaster for an immediate shutdown (SIGQUIT: it ends its
 * backends and frees its shared memory), kills the other servers, waits for all of them, frees
 * any shared memory segment a killed postmaster left, removes the folder and the port
 * reservations. Returns the PIDs that would not die (normally none).
 */
export async function teardown(state: LabState, log: (line: string) => void): Promise<number[]> {
  if (state.watchdogPid) signalTree(state.watchdogPid, 'SIGKILL', state.baseDir)
  const { servers, patroni, postmasters } = serverPids(state)
  // Listed before anything dies (once their postmaster is gone they are orphans).
  const children = postmasters.flatMap((pm) => descendants(pm))
  const shm = sharedMemoryOf(state)
  for (const pid of patroni) signalTree(pid, 'SIGKILL', state.baseDir)
  // A frozen (SIGSTOPped) process acts on no signal but SIGKILL: continue the postmasters and
  // their children first, so that SIGQUIT is handled (SIGKILL needs no such care).
  for (const pid of [...children].reverse()) signalPid(pid, 'SIGCONT', state.baseDir)
  for (const pid of postmasters) signalPid(pid, 'SIGCONT', state.baseDir)
  for (const pid of postmasters) signalTree(pid, 'SIGQUIT', state.baseDir)
  for (const pid of servers) if (!patroni.includes(pid)) signalTree(pid, 'SIGKILL', state.baseDir)
  const all = [...servers, ...postmasters, ...children, ...(state.watchdogPid ? [state.watchdogPid] : [])]
  let alive = await waitForExit(all, 3000)
  if (alive.length > 0) {
    log(`still alive after 3 s, sending SIGKILL: ${alive.join(' ')}`)
    for (const pid of alive) {
      signalTree(pid, 'SIGKILL', state.baseDir)
      signalPid(pid, 'SIGKILL', state.baseDir)
    }
    alive = await waitForExit(alive, 5000)
  }
  await waitForReaped(all, 2000)
  freeSharedMemory(shm)
  for (let i = 0; i < 5; i++) {
    try {
      rmSync(state.baseDir, { recursive: true, force: true })
      break
    } catch (err) {
      if (i === 4) log(`could not remove ${state.baseDir}: ${(err as Error).message}`)
      await sleep(100)
    }
  }
  releasePorts(state.baseDir, state.ports)
  return alive
}

/** The SysV segments named in the members' postmaster.pid files. */
function sharedMemoryOf(state: LabState): Array<{ key: number; id: number }> {
  return state.members.flatMap((m) => {
    const pm = readPostmasterPid(m.dataDir)
    return pm?.shmId !== undefined && pm.shmKey !== undefined ? [{ key: pm.shmKey, id: pm.shmId }] : []
  })
}

/** Removes SysV segments left by postmasters killed with SIGKILL (call only after killing them). */
export function freeSharedMemory(segments: Array<{ key: number; id: number }>): void {
  if (segments.length === 0) return
  let table: string
  try {
    table = readFileSync('/proc/sysvipc/shm', 'utf8')
  } catch {
    return
  }
  for (const line of table.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/)
    const key = Number(cols[0])
    const id = Number(cols[1])
    // IPC_RMID destroys the segment once its last process detaches (backends of a killed
    // postmaster may still be exiting), so nattch need not be 0 yet.
    if (segments.some((s) => s.key === key && s.id === id)) {
      try {
        execFileSync('ipcrm', ['-m', String(id)], { stdio: 'ignore' })
      } catch {
        // gone, or not ours to remove
      }
    }
  }
}

/**
 * The watchdog: a tiny detached Node process that outlives its owner. Every 250 ms it checks
 * that the owner is alive; when the owner is gone (even by SIGKILL, e.g. a vitest worker that
 * was killed), it reads the state file, kills every server of the lab by PID (only PIDs whose
 * working directory is inside the lab folder), frees PostgreSQL's shared memory, removes the
 * folder and the port reservations, and exits. Plain CommonJS, written to <lab>/watchdog.cjs and run with node.
 */
export const WATCHDOG_SOURCE = String.raw`
const fs = require('node:fs')
const cp = require('node:child_process')
const owner = Number(process.argv[2])
const baseDir = process.argv[3]
const stateFile = baseDir + '/lab.json'
const originalParent = process.ppid
function stateOf(pid) {
  try { const s = fs.readFileSync('/proc/' + pid + '/stat', 'utf8'); return s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3) } catch { return undefined }
}
function alive(pid) {
  try { process.kill(pid, 0) } catch (e) { return e.code === 'EPERM' }
  const st = stateOf(pid); return st !== 'Z' && st !== 'X'
}
function ours(pid) {
  try { const cwd = fs.readlinkSync('/proc/' + pid + '/cwd').replace(/ \(deleted\)$/, ''); return cwd === baseDir || cwd.startsWith(baseDir + '/') } catch { return undefined }
}
function kill(pid, sig) {
  if (!pid || pid <= 1) return
  const mine = ours(pid)
  if (mine === false && stateOf(pid) !== 'Z') return
  try { process.kill(-pid, sig) } catch {}
  if (mine !== false) { try { process.kill(pid, sig) } catch {} }
}
function postmaster(dataDir) {
  try {
    const lines = fs.readFileSync(dataDir + '/postmaster.pid', 'utf8').split('\n')
    const shm = (lines[6] || '').trim().split(/\s+/)
    return { pid: Number(lines[0]), key: Number(shm[0]), id: Number(shm[1]) }
  } catch { return undefined }
}
function descendants(root) {
  const kids = new Map()
  let entries = []
  try { entries = fs.readdirSync('/proc') } catch { return [] }
  for (const e of entries) {
    if (!/^[0-9]+$/.test(e)) continue
    try {
      const s = fs.readFileSync('/proc/' + e + '/stat', 'utf8')
      const rest = s.slice(s.lastIndexOf(')') + 2).split(' ')
      if (rest[0] === 'Z' || rest[0] === 'X') continue
      const ppid = Number(rest[1])
      if (!kids.has(ppid)) kids.set(ppid, [])
      kids.get(ppid).push(Number(e))
    } catch {}
  }
  const out = []
  const queue = [root]
  while (queue.length) for (const k of kids.get(queue.shift()) || []) { out.push(k); queue.push(k) }
  return out
}
function sleep(ms) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms) }
function cleanup() {
  let state
  try { state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) } catch { state = undefined }
  if (state) {
    const pms = (state.members || []).map((m) => postmaster(m.dataDir)).filter(Boolean)
    const pids = [
      ...(state.members || []).map((m) => m.pid),
      ...(state.etcd ? [state.etcd.pid] : []),
      ...(state.redis || []).map((r) => r.pid),
      ...((state.sentinel && state.sentinel.sentinels) || []).map((s) => s.pid),
      ...((state.redisCluster && state.redisCluster.nodes) || []).map((n) => n.pid),
      ...(state.redisEndpoint ? [state.redisEndpoint.pid] : []),
    ].filter(Boolean)
    // A postmaster's children lead groups of their own: list them before it dies (a frozen
    // child would never notice its death).
    const children = pms.flatMap((pm) => descendants(pm.pid))
    for (const pid of pids) kill(pid, 'SIGKILL')
    for (const pm of pms) kill(pm.pid, 'SIGKILL')
    for (const pid of children) { if (ours(pid) !== false) { try { process.kill(pid, 'SIGKILL') } catch {} } }
    const all = [...pids, ...pms.map((p) => p.pid), ...children]
    for (let i = 0; i < 200 && all.some(alive); i++) sleep(25)
    try {
      const table = fs.readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1)
      for (const line of table) {
        const c = line.trim().split(/\s+/)
        if (pms.some((p) => p.key === Number(c[0]) && p.id === Number(c[1]))) {
          try { cp.execFileSync('ipcrm', ['-m', c[1]], { stdio: 'ignore' }) } catch {}
        }
      }
    } catch {}
    const registry = process.argv[4]
    for (const port of state.ports || []) {
      try { if (fs.readFileSync(registry + '/' + port, 'utf8') === baseDir) fs.rmSync(registry + '/' + port, { force: true }) } catch {}
    }
  }
  for (let i = 0; i < 10; i++) {
    try { fs.rmSync(baseDir, { recursive: true, force: true }); break } catch { sleep(100) }
  }
  process.exit(0)
}
setInterval(() => {
  if (!alive(owner) || process.ppid !== originalParent) cleanup()
}, 250)
`
