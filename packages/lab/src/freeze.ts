/**
 * SIGSTOP / SIGCONT of whole process trees: a hang without resets, like a frozen VM. A stopped
 * process keeps its sockets open and the kernel still completes TCP handshakes on its listening
 * sockets, so clients see nothing but silence.
 */
import { descendants, processState, signalPid, signalTree, sleep } from './util.js'

/**
 * Stops `root` (with `group`, its whole process group too), then its descendants. The root is
 * stopped first so that it forks nothing new; a descendant may still fork between a listing and
 * its own stop, so the tree is listed again once everything listed is stopped, until a listing
 * finds nothing new. Resolves with every PID stopped, root first; rejects when a process did not
 * stop within `timeoutMs`.
 */
export async function stopTree(
  root: number,
  ownDir: string,
  opts: { group?: boolean; timeoutMs?: number } = {},
): Promise<number[]> {
  const deadline = Date.now() + (opts.timeoutMs ?? 5000)
  if (opts.group) signalTree(root, 'SIGSTOP', ownDir)
  else signalPid(root, 'SIGSTOP', ownDir)
  const stopped = [root]
  for (;;) {
    await waitForStopped(stopped, deadline)
    const fresh = descendants(root).filter((pid) => !stopped.includes(pid))
    if (fresh.length === 0) return stopped
    for (const pid of fresh) {
      signalPid(pid, 'SIGSTOP', ownDir)
      stopped.push(pid)
    }
  }
}

/**
 * Continues a tree stopped by stopTree() in the reverse order: the deepest descendants first,
 * the root (with `group`, its process group) last. `also` are PIDs stopped earlier that may no
 * longer be descendants. Returns the PIDs continued.
 */
export function continueTree(
  root: number,
  ownDir: string,
  opts: { group?: boolean; also?: number[] } = {},
): number[] {
  const tree = descendants(root)
  const extra = (opts.also ?? []).filter((pid) => pid !== root && !tree.includes(pid))
  const order = [...extra, ...tree.reverse()]
  for (const pid of order) signalPid(pid, 'SIGCONT', ownDir)
  if (opts.group) signalTree(root, 'SIGCONT', ownDir)
  else signalPid(root, 'SIGCONT', ownDir)
  return [...order, root]
}

/** True when the process is stopped by a signal ('T'), or gone. */
export function isStopped(pid: number): boolean {
  const state = processState(pid)
  return state === undefined || state === 'T' || state === 't' || state === 'Z' || state === 'X'
}

async function waitForStopped(pids: number[], deadline: number): Promise<void> {
  for (;;) {
    const running = pids.filter((pid) => !isStopped(pid))
    if (running.length === 0) return
    if (Date.now() >= deadline)
      throw new Error(`process(es) ${running.join(' ')} did not stop (SIGSTOP) in time`)
    await sleep(5)
  }
}
