#!/usr/bin/env node
// Runs every benchmark, one after the other, then writes bench/RESULTS.md.
//
//   node --expose-gc bench/run-all.mjs              (npm run bench: installs and builds first)
//   node --expose-gc bench/run-all.mjs --only core,cache
//   node --expose-gc bench/run-all.mjs --skip failover
//
// Each benchmark is a script bench/<group>/*.bench.mjs that prints markdown on stdout and
// writes bench/out/<name>.json. This runner starts each as a child process (node --expose-gc,
// cwd bench/), keeps its stdout, and puts it in RESULTS.md under the machine's description:
// CPU, memory, versions of Node, pg, PostgreSQL, Patroni, Redis, HAProxy. The failover
// comparison (bench/failover) runs last: it takes several minutes (FAILOVER_KILLS kills per
// client, default 5). The soak section of RESULTS.md (written by bench/soak/soak.mjs, not
// run here) and the load shapes' section (bench/load/load.mjs, npm run bench:load) are kept
// as they are.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const BENCH = dirname(fileURLToPath(import.meta.url))
const ROOT = join(BENCH, '..')
const OUT = join(BENCH, 'out')
const RESULTS = join(BENCH, 'RESULTS.md')
const GROUPS = ['core', 'cache', 'pg-router', 'health', 'failover']
const TIMEOUT_MS = 30 * 60_000
export const SOAK_START = '<!-- soak:start -->'
export const SOAK_END = '<!-- soak:end -->'

function parseArgs(argv) {
  const args = { only: undefined, skip: new Set() }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const value = () => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v.split(',').filter(Boolean)
    }
    if (a === '--only') args.only = new Set(value())
    else if (a === '--skip') for (const g of value()) args.skip.add(g)
    else
      throw new Error(
        `unknown argument ${a} (use --only g1,g2 or --skip g1,g2; groups: ${GROUPS.join(', ')})`,
      )
  }
  return args
}

/** bench/<group>/*.bench.mjs, in group order, files sorted. */
export function findBenchmarks(groups = GROUPS) {
  const found = []
  for (const group of groups) {
    const dir = join(BENCH, group)
    if (!existsSync(dir)) continue
    for (const file of readdirSync(dir).sort()) {
      if (file.endsWith('.bench.mjs')) found.push({ group, file: join(dir, file) })
    }
  }
  return found
}

function run(file) {
  return new Promise((resolve) => {
    const started = performance.now()
    const child = spawn(process.execPath, ['--expose-gc', file], {
      cwd: BENCH,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: process.env,
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => {
      stdout += c
      process.stdout.write(c)
    })
    child.stderr.on('data', (c) => {
      stderr += c
      process.stderr.write(c)
    })
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${TIMEOUT_MS / 60_000} min)\n`
      child.kill('SIGTERM')
    }, TIMEOUT_MS)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, seconds: (performance.now() - started) / 1000 })
    })
  })
}

function version(cmd, args, pattern) {
  try {
    const out = execFileSync(cmd, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
    })
    const m = pattern.exec(out)
    return m ? m[1] : out.trim().split('\n')[0]
  } catch {
    return 'not installed'
  }
}

function packageVersion(name) {
  try {
    return JSON.parse(readFileSync(join(BENCH, 'node_modules', name, 'package.json'), 'utf8')).version
  } catch {
    return '?'
  }
}

export function machine() {
  let cpuModel = cpus()[0]?.model ?? '?'
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))
    if (m) cpuModel = m[1].trim()
  } catch {}
  let nproc = cpus().length
  try {
    nproc = Number(execFileSync('nproc', { encoding: 'utf8' }).trim()) || nproc
  } catch {}
  let os = process.platform
  try {
    const m = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))
    if (m) os = m[1]
  } catch {}
  return {
    date: new Date().toISOString(),
    os,
    cpu: cpuModel,
    nproc,
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    pg: packageVersion('pg'),
    postgresJs: packageVersion('postgres'),
    ioredis: packageVersion('ioredis'),
    opossum: packageVersion('opossum'),
    postgresql: version('/usr/lib/postgresql/15/bin/postgres', ['--version'], /(\d+\.\d+)/),
    patroni: version('patroni', ['--version'], /patroni (\S+)/i),
    redis: version('redis-server', ['--version'], /v=(\S+)/),
    haproxy: version('/usr/sbin/haproxy', ['-v'], /version (\S+)/i),
    etcd: version('etcd', ['--version'], /etcd Version: (\S+)/i),
  }
}

/** The block between the soak markers of an existing RESULTS.md, or a placeholder. */
export function keptSoakSection(existing) {
  const a = existing.indexOf(SOAK_START)
  const b = existing.indexOf(SOAK_END)
  if (a !== -1 && b > a) return existing.slice(a, b + SOAK_END.length)
  return `${SOAK_START}\n## Soak\n\nNot run yet: \`node bench/soak/soak.mjs\` (10 minutes; SOAK_MS to change) writes this section.\n${SOAK_END}`
}

export const LOAD_START = '<!-- load:start -->'
export const LOAD_END = '<!-- load:end -->'

/** The load shapes' block of an existing RESULTS.md (written by bench/load/load.mjs), or ''. */
export function keptLoadSection(existing) {
  const a = existing.indexOf(LOAD_START)
  const b = existing.indexOf(LOAD_END)
  return a !== -1 && b > a ? `\n\n${existing.slice(a, b + LOAD_END.length)}` : ''
}

/** The sections of an existing RESULTS.md, by benchmark path (to keep those not rerun). */
export function keptSections(existing) {
  const kept = new Map()
  const re = /<!-- bench:(\S+):start -->[\s\S]*?<!-- bench:\1:end -->/g
  for (const m of existing.matchAll(re)) kept.set(m[1], m[0])
  return kept
}

export function renderResults(m, runs, soakSection) {
  const lines = []
  lines.push('# Benchmark results')
  lines.push('')
  lines.push(
    'Written by `npm run bench` (`node --expose-gc bench/run-all.mjs`): rerun it to refresh every figure here. ' +
      'Each table compares things measured side by side in one run on this machine; read the ratios, not the absolute numbers.',
  )
  lines.push('')
  lines.push('## Machine')
  lines.push('')
  lines.push('| | |')
  lines.push('|---|---|')
  lines.push(`| date | ${m.date} |`)
  lines.push(`| OS | ${m.os} |`)
  lines.push(`| CPU | ${m.cpu}, nproc ${m.nproc} |`)
  lines.push(`| memory | ${m.memoryGiB} GiB |`)
  lines.push(`| Node | ${m.node} |`)
  lines.push(
    `| pg / postgres.js / ioredis / opossum | ${m.pg} / ${m.postgresJs} / ${m.ioredis} / ${m.opossum} |`,
  )
  lines.push(`| PostgreSQL / Patroni / etcd | ${m.postgresql} / ${m.patroni} / ${m.etcd} |`)
  lines.push(`| Redis / HAProxy | ${m.redis} / ${m.haproxy} |`)
  lines.push('')
  lines.push(
    'Other engineers and processes may share these cores: the side-by-side design makes ratios robust to that, absolute figures less so.',
  )
  lines.push('')
  for (const r of runs) {
    const rel = relative(ROOT, r.file)
    if (r.kept) {
      lines.push(r.kept)
      lines.push('')
      continue
    }
    lines.push(`<!-- bench:${rel}:start -->`)
    lines.push(`## ${r.group}: ${rel}`)
    lines.push('')
    lines.push(
      `Command: \`node --expose-gc ${rel}\` (run ${m.date.slice(0, 16).replace('T', ' ')} UTC, ${r.seconds.toFixed(0)} s${r.code === 0 ? '' : `, FAILED with ${r.code ?? r.signal}`}).`,
    )
    lines.push('')
    const body = r.stdout
      .split('\n')
      .filter((l) => !/^wrote \S+/.test(l.trim()))
      .join('\n')
      .trim()
    if (body) lines.push(body)
    if (r.code !== 0) {
      lines.push('')
      lines.push('```')
      lines.push(r.stderr.trim().split('\n').slice(-20).join('\n'))
      lines.push('```')
    }
    lines.push(`<!-- bench:${rel}:end -->`)
    lines.push('')
  }
  lines.push(soakSection)
  lines.push('')
  return lines.join('\n')
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const groups = GROUPS.filter((g) => (!args.only || args.only.has(g)) && !args.skip.has(g))
  const all = findBenchmarks()
  const benches = all.filter((b) => groups.includes(b.group))
  const existing = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : ''
  const kept = keptSections(existing)
  mkdirSync(OUT, { recursive: true })
  const m = machine()
  console.log(`${benches.length} benchmark(s): ${benches.map((b) => relative(BENCH, b.file)).join(', ')}`)
  const runs = []
  for (const b of benches) {
    console.log(`\n== ${relative(ROOT, b.file)}`)
    const r = await run(b.file)
    runs.push({ ...b, ...r })
    console.log(
      `== ${relative(ROOT, b.file)}: ${r.code === 0 ? 'ok' : `FAILED (${r.code ?? r.signal})`} in ${r.seconds.toFixed(0)} s`,
    )
  }
  // Benchmarks not run this time keep their previous section (with its own date).
  const ordered = all
    .map((b) => runs.find((r) => r.file === b.file) ?? { ...b, kept: kept.get(relative(ROOT, b.file)) })
    .filter((r) => r.kept !== undefined || r.stdout !== undefined)
  writeFileSync(RESULTS, renderResults(m, ordered, keptSoakSection(existing) + keptLoadSection(existing)))
  writeFileSync(
    join(OUT, 'run-all.json'),
    `${JSON.stringify({ machine: m, runs: runs.map(({ stdout, stderr, ...r }) => r) }, null, 2)}\n`,
  )
  console.log(`\nwrote ${relative(ROOT, RESULTS)}`)
  const failed = runs.filter((r) => r.code !== 0)
  if (failed.length > 0) {
    console.error(
      `${failed.length} benchmark(s) failed: ${failed.map((r) => relative(ROOT, r.file)).join(', ')}`,
    )
    process.exitCode = 1
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
