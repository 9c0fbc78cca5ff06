import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isProcessAlive, type LabState, redisCommand, startLab } from '@resilient/lab'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// These tests run the built package (dist/), the way a user's CI or shell would.
const pkg = fileURLToPath(new URL('..', import.meta.url))
const repo = fileURLToPath(new URL('../../..', import.meta.url))
const bin = join(pkg, 'bin/resilient-lab.js')
const distIndex = join(pkg, 'dist/index.js')

function run(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }))
  })
}

async function until(what: string, probe: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

let work: string

beforeAll(() => {
  execFileSync(join(repo, 'node_modules/.bin/tsc'), ['-b', pkg], { cwd: repo, stdio: 'inherit' })
  work = mkdtempSync(join(tmpdir(), 'lab-cli-test-'))
  // mkdtemp makes it 0700; the postgres user (etcd, Patroni) must be able to reach the lab in it.
  chmodSync(work, 0o755)
})

afterAll(() => {
  rmSync(work, { recursive: true, force: true })
})

describe('resilient-lab CLI', () => {
  let dir: string
  let state: LabState | undefined

  afterAll(async () => {
    if (state && existsSync(dir)) await run(['down', '--dir', dir], work)
  })

  it('up / status / chaos / down', async () => {
    dir = join(work, 'lab')
    const up = await run(['up', '--dir', dir, '--json'], work)
    expect(up.code, up.stderr).toBe(0)
    const info = JSON.parse(up.stdout)
    expect(info.members).toHaveLength(3)
    expect(info.patroni.endpoints).toHaveLength(3)
    expect(info.postgres.user).toBe('postgres')
    expect(info.connectionString).toMatch(/^postgres:\/\/postgres:/)
    expect(info.redis.port).toBeGreaterThan(0)
    expect(info.bootSeconds).toBeLessThan(45)
    state = JSON.parse(readFileSync(join(dir, 'lab.json'), 'utf8')) as LabState
    expect(state.ownerPid).toBeUndefined()

    // The servers outlived the `up` process.
    const status = await run(['status', '--dir', dir], work)
    expect(status.code, status.stdout + status.stderr).toBe(0)
    expect(status.stdout).toContain('summary: 1 leader, 2 streaming replicas')
    expect(status.stdout.match(/ leader /g)).toHaveLength(1)
    expect(status.stdout.match(/ streaming$/gm)).toHaveLength(2)
    expect(status.stdout).toMatch(/redis0\s+master/)

    const json = JSON.parse((await run(['status', '--dir', dir, '--json'], work)).stdout)
    expect(json.healthy).toBe(true)
    expect(json.members.filter((m: { role: string }) => m.role === 'replica')).toHaveLength(2)
    for (const m of json.members) if (m.role === 'replica') expect(typeof m.lag).toBe('number')

    // chaos: switchover to a named replica, across invocations (state rehydrated each time).
    const leader = json.members.find((m: { role: string }) => m.role === 'leader').name
    const candidate = json.members.find((m: { role: string }) => m.role === 'replica').name
    const sw = await run(['chaos', 'switchover', candidate, '--dir', dir, '--json'], work)
    expect(sw.code, sw.stderr).toBe(0)
    expect(JSON.parse(sw.stdout).leader).toBe(candidate)
    const wait = await run(['chaos', 'wait-replicas', '2', '--dir', dir], work)
    expect(wait.code, wait.stderr).toBe(0)
    expect(wait.stdout).toContain(leader)

    // pause-redis makes status unhealthy (exit 3); resume-redis heals it.
    expect((await run(['chaos', 'pause-redis', '--dir', dir], work)).code).toBe(0)
    const paused = await run(['status', '--dir', dir], work)
    expect(paused.code).toBe(3)
    expect(paused.stdout).toMatch(/redis0\s+not answering/)
    expect((await run(['chaos', 'resume-redis', '--dir', dir], work)).code).toBe(0)

    // freeze-member / thaw-member of a replica: status shows it frozen (exit 3) meanwhile.
    const replica = json.members.find((m: { role: string; name: string }) => m.name !== candidate).name
    const fz = await run(['chaos', 'freeze-member', replica, '--dir', dir, '--json'], work)
    expect(fz.code, fz.stderr).toBe(0)
    const frozenPids = JSON.parse(fz.stdout).pids as number[]
    expect(frozenPids.length).toBeGreaterThanOrEqual(4)
    const frozenStatus = await run(['status', '--dir', dir], work)
    expect(frozenStatus.code).toBe(3)
    expect(frozenStatus.stdout).toMatch(new RegExp(`${replica}\\s+\\S+\\s+frozen`))
    expect((await run(['chaos', 'thaw-member', replica, '--dir', dir], work)).code).toBe(0)
    expect(JSON.parse(readFileSync(join(dir, 'lab.json'), 'utf8')).frozen.members).toEqual([])
    // freeze-dcs / thaw-dcs, recorded in lab.json (another invocation thaws it).
    expect((await run(['chaos', 'freeze-dcs', '--dir', dir], work)).code).toBe(0)
    expect(JSON.parse(readFileSync(join(dir, 'lab.json'), 'utf8')).frozen.dcs).toBe(true)
    expect((await run(['chaos', 'thaw-dcs', '--dir', dir], work)).code).toBe(0)
    expect(JSON.parse(readFileSync(join(dir, 'lab.json'), 'utf8')).frozen.dcs).toBe(false)
    // read-only on|off waits until the leader shows it.
    const ro = await run(['chaos', 'read-only', 'on', '--dir', dir, '--json'], work)
    expect(ro.code, ro.stderr).toBe(0)
    expect(JSON.parse(ro.stdout).readOnly).toBe('on')
    expect((await run(['chaos', 'read-only', 'off', '--dir', dir], work)).code).toBe(0)

    const bad = await run(['chaos', 'no-such-verb', '--dir', dir], work)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain('unknown chaos verb')

    const final = JSON.parse(readFileSync(join(dir, 'lab.json'), 'utf8')) as LabState
    const pids = [
      ...final.startedPids,
      ...final.members.map((m) =>
        Number(readFileSync(join(m.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]),
      ),
    ]
    expect(pids.filter(isProcessAlive).length).toBeGreaterThanOrEqual(8)
    const down = await run(['down', '--dir', dir], work)
    expect(down.code, down.stderr).toBe(0)
    expect(pids.filter(isProcessAlive)).toEqual([])
    expect(existsSync(dir)).toBe(false)
    const again = await run(['down', '--dir', dir], work)
    expect(again.code).toBe(0)
  })

  it('a Redis-only lab: up --redis-replica --redis-cluster, Redis chaos verbs, down', async () => {
    const rdir = join(work, 'redis-lab')
    const up = await run(
      ['up', '--nodes', '0', '--redis-replica', '--redis-cluster', '--dir', rdir, '--json'],
      work,
    )
    expect(up.code, up.stderr).toBe(0)
    const info = JSON.parse(up.stdout)
    expect(info.members).toEqual([])
    expect(info.redisEndpoint.port).toBeGreaterThan(0)
    expect(info.redisCluster.nodes).toHaveLength(6)
    try {
      const st = await run(['status', '--dir', rdir], work)
      expect(st.code, st.stdout + st.stderr).toBe(0)
      expect(st.stdout).toMatch(/cluster0\s+master\s+.*cluster_state:ok/)
      expect(st.stdout).toMatch(/endpoint\s+ok\s+.*-> redis0/)
      // The endpoint is a process of the lab: it works for a CLI lab, and follows a demotion.
      const demote = await run(['chaos', 'demote-redis-primary', '--dir', rdir, '--json'], work)
      expect(demote.code, demote.stderr).toBe(0)
      expect(JSON.parse(demote.stdout)).toMatchObject({ demoted: 'redis0', promoted: 'redis1' })
      expect(await redisCommand(info.redisEndpoint.port, ['SET', 'k', 'v'])).toBe('OK')
      const fo = await run(['chaos', 'failover-redis-cluster', 'some-key', '--dir', rdir, '--json'], work)
      expect(fo.code, fo.stderr).toBe(0)
      const moved = JSON.parse(fo.stdout)
      const after = JSON.parse((await run(['status', '--dir', rdir, '--json'], work)).stdout)
      const roleOf = (name: string) => after.redisCluster.find((n: { name: string }) => n.name === name).role
      expect([roleOf(moved.master), roleOf(moved.promoted)]).toEqual(['replica', 'master'])
      expect(after.healthy).toBe(true)
    } finally {
      const pids = (JSON.parse(readFileSync(join(rdir, 'lab.json'), 'utf8')) as LabState).startedPids
      const down = await run(['down', '--dir', rdir], work)
      expect(down.code, down.stderr).toBe(0)
      expect(pids.filter(isProcessAlive)).toEqual([])
    }
    expect(existsSync(rdir)).toBe(false)
  })

  it('prints usage, and refuses bad options', async () => {
    const help = await run(['help'], work)
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('resilient-lab up')
    const bad = await run(['up', '--nodes', 'x'], work)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('--nodes must be an integer')
    const none = await run(['status', '--dir', join(work, 'nothing')], work)
    expect(none.code).toBe(1)
    expect(none.stderr).toContain('no lab state file')
    // A folder that is not empty is never adopted (down() would remove it).
    mkdirSync(join(work, 'full'))
    writeFileSync(join(work, 'full/keep.txt'), 'mine')
    const full = await run(['up', '--dir', join(work, 'full')], work)
    expect(full.code).toBe(1)
    expect(full.stderr).toContain('is not empty')
    expect(readFileSync(join(work, 'full/keep.txt'), 'utf8')).toBe('mine')
    if (process.getuid?.() === 0) {
      // As root, servers run as postgres: a folder it cannot reach is refused up front.
      mkdirSync(join(work, 'private'), { mode: 0o700 })
      const hidden = await run(['up', '--dir', join(work, 'private/lab')], work)
      expect(hidden.code).toBe(1)
      expect(hidden.stderr).toContain('cannot reach')
      expect(existsSync(join(work, 'private/lab'))).toBe(false)
    }
  })
})

describe('a lab driven from another process (globalSetup owns it, a worker does chaos)', () => {
  it('down() in the owner also ends servers the other process restarted', async () => {
    const lab = await startLab({ nodes: 0 })
    try {
      const file = join(work, 'worker.mjs')
      writeFileSync(
        file,
        `import { Lab, readState } from ${JSON.stringify(distIndex)}
        const lab = Lab.fromState(readState(${JSON.stringify(lab.baseDir)}))
        await lab.restartRedis()
        process.stdout.write(JSON.stringify(lab.redisNodes[0].pid))
        process.exit(0)`,
      )
      const before = lab.redisNodes[0]!.pid!
      const out = execFileSync(process.execPath, [file], { encoding: 'utf8' })
      const restarted = Number(out)
      expect(restarted).not.toBe(before)
      expect(isProcessAlive(before)).toBe(false)
      expect(isProcessAlive(restarted)).toBe(true)
      // The owner's view follows lab.json.
      expect(lab.redisNodes[0]!.pid).toBe(restarted)
      expect(lab.pids()).toContain(restarted)
      expect(await redisCommand(lab.redis.port, ['PING'])).toBe('PONG')
      await lab.down()
      expect(isProcessAlive(restarted)).toBe(false)
    } finally {
      await lab.down()
    }
  })
})

describe('teardown when the owning process ends without down()', () => {
  // With a member, it is frozen (SIGSTOP of Patroni, the postmaster and its children) and etcd
  // too: a stopped postmaster child never notices its postmaster's death, so every PID must be
  // killed by the hook or the watchdog itself.
  const script = (mode: string, nodes: number) => `
    import { startLab } from ${JSON.stringify(distIndex)}
    const lab = await startLab({ nodes: ${nodes}, redis: ${nodes === 0} })
    const frozen = ${nodes} > 0 ? (await lab.freezeMember('pg0')).children : []
    if (${nodes} > 0) await lab.freezeDcs()
    process.stdout.write(JSON.stringify({ baseDir: lab.baseDir, pids: [...lab.pids(), ...frozen], postmasters: lab.postmasterPids() }) + '\\n')
    if (${JSON.stringify(mode)} === 'exit') process.exit(0)
    setInterval(() => {}, 1000)
  `

  async function startOwner(
    mode: string,
    nodes: number,
  ): Promise<{
    child: ChildProcess
    info: { baseDir: string; pids: number[]; postmasters: number[] }
  }> {
    const file = join(work, `owner-${mode}-${nodes}.mjs`)
    writeFileSync(file, script(mode, nodes))
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'inherit'] })
    const info = await new Promise<{ baseDir: string; pids: number[]; postmasters: number[] }>(
      (resolve, reject) => {
        let out = ''
        child.stdout!.on('data', (d) => {
          out += d
          if (out.includes('\n')) resolve(JSON.parse(out))
        })
        child.on('exit', (code) => {
          if (!out.includes('\n')) reject(new Error(`owner exited with ${code} before reporting`))
        })
      },
    )
    return { child, info }
  }

  it('process.exit(): the exit hook kills everything, frozen processes too', async () => {
    const { child, info } = await startOwner('exit', 1)
    expect(info.pids.length).toBeGreaterThanOrEqual(8)
    await new Promise((r) => child.once('exit', r))
    const all = [...info.pids, ...info.postmasters]
    await until('every lab process to end', () => !all.some(isProcessAlive), 5000)
    await until('the lab folder to be removed', () => !existsSync(info.baseDir), 5000)
  })

  it('SIGTERM: the handler kills everything and the process still dies of SIGTERM', async () => {
    const { child, info } = await startOwner('wait', 0)
    const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_code, signal) => r(signal)))
    child.kill('SIGTERM')
    expect(await exited).toBe('SIGTERM')
    await until('every lab process to end', () => !info.pids.some(isProcessAlive), 5000)
    await until('the lab folder to be removed', () => !existsSync(info.baseDir), 5000)
  })

  it('SIGKILL of the owner (a killed test worker): the watchdog kills Patroni, PostgreSQL, etcd, frozen or not', async () => {
    const t0 = performance.now()
    const { child, info } = await startOwner('wait', 1)
    console.log(`owner with a 1-member lab ready after ${((performance.now() - t0) / 1000).toFixed(2)} s`)
    expect(info.postmasters).toHaveLength(1)
    expect(info.pids.filter(isProcessAlive).length).toBeGreaterThanOrEqual(8)
    const t1 = performance.now()
    child.kill('SIGKILL')
    const all = [...info.pids, ...info.postmasters]
    await until('every lab process to end', () => !all.some(isProcessAlive), 10_000)
    await until('the lab folder to be removed', () => !existsSync(info.baseDir), 10_000)
    console.log(
      `watchdog cleaned up ${((performance.now() - t1) / 1000).toFixed(2)} s after the owner's SIGKILL`,
    )
  })
})
