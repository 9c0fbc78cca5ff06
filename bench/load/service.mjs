// Starts the Express example the way its package.json says (`scripts.start`, after
// `scripts.build` when there is one), against a lab, and measures the process: CPU and memory
// from /proc, and a CPU profile (`--cpu-prof`) split by where the time went.
//
// Only the example's HTTP interface, its environment variables and its start script are
// used: when the example becomes TypeScript (`build`: tsc, `start`: node dist/server.js),
// nothing here changes as long as `start` stays `node <file>`.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { request } from '../../scripts/demo.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** `node <file> [args]` from the example's start script. */
export function startCommand(exampleDir) {
  const pkg = JSON.parse(readFileSync(join(exampleDir, 'package.json'), 'utf8'))
  const start = pkg.scripts?.start
  const m = /^node\s+(.+)$/.exec(start ?? '')
  if (!m)
    throw new Error(`${exampleDir}: scripts.start must be "node <file>" (it is ${JSON.stringify(start)})`)
  return { build: pkg.scripts?.build, args: m[1].split(/\s+/) }
}

/**
 * Builds (when the example has a build script) and starts the example against the lab;
 * resolves once it listens and /ready answers 200. `nodeOptions`: extra node flags for the
 * service only (e.g. --cpu-prof).
 */
export async function startService(lab, { exampleDir, nodeOptions = [], env = {}, readyTimeoutMs = 60_000 }) {
  const { build, args } = startCommand(exampleDir)
  if (build) execFileSync('npm', ['run', '--silent', 'build'], { cwd: exampleDir, stdio: 'inherit' })
  const child = spawn(process.execPath, [...nodeOptions, ...args], {
    cwd: exampleDir,
    env: {
      PATH: process.env.PATH ?? '',
      NODE_ENV: 'production',
      PORT: '0',
      HOST: '127.0.0.1',
      PATRONI_ENDPOINTS: lab.patroni.endpoints.join(','),
      PGUSER: lab.postgres.user,
      PGPASSWORD: lab.postgres.password,
      PGDATABASE: lab.postgres.database,
      REDIS_HOST: lab.redis.host,
      REDIS_PORT: String(lab.redis.port),
      ADMIN_PORT: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let log = ''
  child.stderr.on('data', (c) => {
    log = (log + c).slice(-8000)
  })
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the service did not listen in time')), readyTimeoutMs)
    child.stdout.on('data', (c) => {
      log = (log + c).slice(-8000)
      const match = /listening on (http:\/\/[^\s,]+)/.exec(log)
      if (match) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`the service exited (${code ?? signal}) before listening:\n${log}`))
    })
  })
  const deadline = Date.now() + readyTimeoutMs
  for (;;) {
    const res = await request(url, 'GET', '/ready', { timeoutMs: 2000 }).catch(() => undefined)
    if (res?.status === 200) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`the service was not ready in time (last: ${res?.status})`)
    }
    await sleep(200)
  }
  const exited = once(child, 'exit')
  return {
    url,
    pid: child.pid,
    log: () => log,
    /** SIGTERM (the example drains, closes and exits: --cpu-prof is written then). */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
      await exited
      clearTimeout(timer)
    },
  }
}

const TICKS = 100 // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux

/** CPU seconds (user + system) and resident memory of a process, from /proc. */
export function processSample(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const cpuS = (Number(fields[11]) + Number(fields[12])) / TICKS
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    return { cpuS, rssMiB: rssKiB / 1024 }
  } catch {
    return undefined
  }
}

/**
 * Where a profile node's code lives: '@resilient/<pkg>', an npm package, a Node module
 * ('node:_http_server'), a native function ('native writev'), or a V8 bucket ('(garbage collector)').
 */
export function categorize(url, functionName) {
  if (!url) {
    if (functionName === '(idle)') return '(idle)'
    if (functionName === '(garbage collector)') return '(garbage collector)'
    if (functionName === '(program)') return '(program)'
    return `native ${functionName || '(anonymous)'}`
  }
  let m = /\/packages\/(core|pg-router|cache|health|lab)\/(?:dist|src)\//.exec(url)
  if (m) return `@resilient/${m[1]}`
  m = /node_modules\/(@resilient\/[^/]+)\//.exec(url)
  if (m) return m[1]
  const parts = url.split('node_modules/')
  if (parts.length > 1) {
    const rest = parts[parts.length - 1]
    return rest.startsWith('@') ? rest.split('/').slice(0, 2).join('/') : rest.split('/')[0]
  }
  if (url.startsWith('node:')) return url
  if (!url.includes('/')) return `node:${url}`
  if (/\/examples\//.test(url)) return 'the example'
  return 'other'
}

/** Self time by category from a .cpuprofile; `resilientShare` is of the non-idle time. */
export function profileBreakdown(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const self = new Map()
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i])
    const dt = profile.timeDeltas[i] ?? 0
    self.set(node, (self.get(node) ?? 0) + dt)
  }
  const byCategory = {}
  let total = 0
  for (const [node, us] of self) {
    const c = categorize(node.callFrame.url, node.callFrame.functionName)
    byCategory[c] = (byCategory[c] ?? 0) + us
    total += us
  }
  const busy = total - (byCategory['(idle)'] ?? 0)
  const resilient = Object.entries(byCategory)
    .filter(([c]) => c.startsWith('@resilient/'))
    .reduce((a, [, us]) => a + us, 0)
  // Node's own modules and native functions also as one line each, for the overview.
  const nodeShare = Object.entries(byCategory)
    .filter(([c]) => c.startsWith('node:') || c.startsWith('native '))
    .reduce((a, [, us]) => a + us, 0)
  const top = Object.entries(byCategory)
    .filter(([c]) => c !== '(idle)')
    .sort((a, b) => b[1] - a[1])
    .map(([category, us]) => ({ category, ms: Math.round(us / 1000), share: busy > 0 ? us / busy : 0 }))
  return {
    totalMs: Math.round(total / 1000),
    busyMs: Math.round(busy / 1000),
    resilientShare: busy > 0 ? resilient / busy : 0,
    nodeShare: busy > 0 ? nodeShare / busy : 0,
    top,
  }
}

/** The newest .cpuprofile in `dir`. */
export function readProfile(dir) {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))
  if (files.length === 0) return undefined
  files.sort()
  return JSON.parse(readFileSync(join(dir, files[files.length - 1]), 'utf8'))
}
