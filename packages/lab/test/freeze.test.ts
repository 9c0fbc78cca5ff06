import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { afterEach, describe, expect, it } from 'vitest'
import { continueTree, isStopped, stopTree } from '../src/freeze.js'
import { descendants, isProcessAlive, waitForExit } from '../src/util.js'

function state(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  } catch {
    return undefined
  }
}

const roots: number[] = []
afterEach(async () => {
  for (const root of roots.splice(0)) {
    const tree = [root, ...descendants(root)]
    for (const pid of tree) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
    await waitForExit(tree, 2000)
  }
})

/** A shell that keeps forking short-lived children (a process tree that changes while we look). */
async function forkingTree(): Promise<number> {
  const child = spawn('sh', ['-c', 'sleep 60 & sleep 60 & while :; do sleep 0.01; done'], {
    cwd: tmpdir(),
    stdio: 'ignore',
  })
  await new Promise((r) => child.once('spawn', r))
  const root = child.pid!
  roots.push(root)
  const deadline = Date.now() + 5000
  while (descendants(root).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  return root
}

describe('stopTree / continueTree', () => {
  it('stops a forking tree, root first, and nothing of it runs until continued', async () => {
    const root = await forkingTree()
    const stopped = await stopTree(root, tmpdir())
    expect(stopped[0]).toBe(root)
    // Everything alive under the root is stopped, and it stays so: no new child appears.
    const tree = descendants(root)
    expect(tree.length).toBeGreaterThanOrEqual(2)
    for (const pid of [root, ...tree]) expect(isStopped(pid), `pid ${pid} is ${state(pid)}`).toBe(true)
    for (const pid of tree) expect(stopped).toContain(pid)
    await new Promise((r) => setTimeout(r, 100))
    expect(descendants(root).sort()).toEqual(tree.sort())

    const continued = continueTree(root, tmpdir())
    expect(continued.at(-1)).toBe(root)
    const deadline = Date.now() + 2000
    while ([root, ...tree].some((pid) => state(pid) === 'T') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10))
    for (const pid of [root, ...tree]) expect(state(pid), `pid ${pid}`).not.toBe('T')
    expect(isProcessAlive(root)).toBe(true)
  })

  it('leaves processes outside the given folder alone', async () => {
    const root = await forkingTree()
    // The tree runs in tmpdir(); a folder it does not run in must not be signalled.
    const stopped = await stopTree(root, '/nonexistent-lab-folder', { timeoutMs: 300 }).catch((e: Error) => e)
    expect(stopped).toBeInstanceOf(Error)
    expect(state(root)).not.toBe('T')
  })
})
