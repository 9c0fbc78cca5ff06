/**
 * bench/lib/pin.mjs: keeps a client-vs-client benchmark and its servers on separate cores.
 *
 * On a 2-core machine the scheduler puts each PostgreSQL backend and the bench process on
 * either core, and where a backend lands changes its round-trip time by up to a third (seen
 * here: two pg.Pools with the same options, one 90 µs, the other 137 µs per `SELECT 1`, in
 * one run). That is noise about the machine, not about the clients being compared. Pinning
 * the bench to the first core and every server process of the lab to the last one gives each
 * connection the same path.
 *
 *   pinApart(lab, { env = process.env }) -> a line describing what was done (or why not)
 *
 * Call it before opening any connection: backends forked later by a pinned postmaster inherit
 * its core. PIN=0 in the environment turns it off. Needs `taskset` (util-linux) and 2+ cores.
 */
import { execFileSync } from 'node:child_process'
import { availableParallelism } from 'node:os'

export function pinApart(lab, { env = process.env } = {}) {
  if (env.PIN === '0') return 'not pinned (PIN=0)'
  const cores = availableParallelism()
  if (cores < 2) return 'not pinned (one core)'
  const server = String(cores - 1)
  const servers = [...new Set([...lab.pids(), ...lab.postmasterPids()])]
  try {
    for (const pid of servers) {
      try {
        execFileSync('taskset', ['-a', '-p', '-c', server, String(pid)], { stdio: 'ignore' })
      } catch {
        // a process of the lab that has already exited (a finished helper): nothing to pin
      }
    }
    execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' })
  } catch (err) {
    return `not pinned (taskset failed: ${err.message.split('\n')[0]})`
  }
  return `pinned: this process on core 0, the lab's servers (${servers.length} processes) on core ${server}`
}
