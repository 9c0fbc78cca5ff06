#!/usr/bin/env node
// Do the published types hold in a user's TypeScript project? Packs every publishable package
// with `pnpm pack` (as it would be published: `workspace:` ranges rewritten, only `files`),
// installs the tarballs into fresh strict consumer projects (skipLibCheck: false) and
// type-checks the small service in scripts/consumer/ against them: once with no optional peer
// installed (main entries only), once with every optional peer (every subpath). And reads the
// declarations of each export: the main entry loads only the package's dependencies, a
// subpath only those and its own peers (so no optional peer's types leak into a
// declaration every user loads).
// Each project gets exactly what a package manager would give a user: the tarballs, the
// `dependencies` each tarball declares, the peers the variant names, @types/node and
// TypeScript. Offline: third-party packages are linked from this workspace's install (the
// copies `pnpm install` put in the store), nothing is downloaded.
//
//   node scripts/check-types.mjs          (part of npm test, through scripts/check-packages.mjs)
//
// A new subpath export or optional peer not named below fails the check: add a consumer file
// in scripts/consumer/ and a line to SUBPATHS (or MAIN_ENTRY_PEERS).
import { execFile } from 'node:child_process'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const CONSUMER = join(ROOT, 'scripts', 'consumer')

/**
 * The optional peers each subpath export may need, and the consumer file that uses it. The
 * main entry ('.') may need none. A subpath or optional peer missing here fails the check.
 */
export const SUBPATHS = {
  '@resilient/pg-router/express': { peers: [], file: 'pg-router-express.ts' },
  '@resilient/pg-router/fastify': { peers: ['fastify', 'fastify-plugin'], file: 'pg-router-fastify.ts' },
  '@resilient/health/express': { peers: ['express'], file: 'health-express.ts' },
  '@resilient/health/fastify': { peers: ['fastify', 'fastify-plugin'], file: 'health-fastify.ts' },
  '@resilient/health/grpc': { peers: ['@grpc/grpc-js', 'grpc-health-check'], file: 'health-grpc.ts' },
}
/** Optional peers a main entry can use at run time (never in its types), with their consumer file. */
export const MAIN_ENTRY_PEERS = {
  'prom-client': 'health-metrics.ts',
  '@opentelemetry/api': undefined,
}
/** What a user installs next to a peer when the peer ships no types. */
const TYPES_OF = { express: '@types/express' }

/**
 * Two consumer projects: one with no optional peer (only the main entries: they must hold
 * without any), one with every optional peer and every subpath. That no subpath's types need
 * another subpath's peer is checked on the declarations themselves (importsOf), not with one
 * more compile per subpath: a strict compile with skipLibCheck: false takes 5 to 8 s of CPU.
 */
export function variants() {
  const peers = [
    ...new Set([...Object.values(SUBPATHS).flatMap((s) => s.peers), ...Object.keys(MAIN_ENTRY_PEERS)]),
  ]
  return [
    { name: 'no optional peer installed: main entries', files: ['service.ts'], install: [] },
    {
      name: `every optional peer installed (${peers.join(', ')}): every subpath`,
      files: [
        'service.ts',
        ...Object.values(SUBPATHS).map((s) => s.file),
        ...Object.values(MAIN_ENTRY_PEERS).filter(Boolean),
      ],
      install: peers.flatMap((p) => (TYPES_OF[p] ? [p, TYPES_OF[p]] : [p])),
    },
  ]
}

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    lib: ['ES2023'],
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    noUncheckedIndexedAccess: true,
    exactOptionalPropertyTypes: true,
    verbatimModuleSyntax: true,
    skipLibCheck: false,
    noEmit: true,
    types: ['node'],
  },
}

const packages = readdirSync(join(ROOT, 'packages'))
  .map((dir) => ({
    dir: join(ROOT, 'packages', dir),
    pkg: readJson(join(ROOT, 'packages', dir, 'package.json')),
  }))
  .filter((p) => !p.pkg.private)

function readJson(file) {
  return JSON.parse(readFileSync(file, 'utf8'))
}

/** Every subpath export and optional peer the tables above must name. */
export function coverageGaps(pkgs = packages.map((p) => p.pkg)) {
  const gaps = []
  for (const pkg of pkgs) {
    for (const sub of Object.keys(pkg.exports ?? {})) {
      if (sub === '.' || sub === './package.json') continue
      const name = `${pkg.name}${sub.slice(1)}`
      if (!SUBPATHS[name]) gaps.push(`subpath ${name}`)
    }
    for (const [peer, meta] of Object.entries(pkg.peerDependenciesMeta ?? {})) {
      const named = peer in MAIN_ENTRY_PEERS || Object.values(SUBPATHS).some((s) => s.peers.includes(peer))
      if (meta.optional && !named) gaps.push(`optional peer ${peer} (of ${pkg.name})`)
    }
  }
  return gaps
}

const SPECIFIER =
  /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"]([^'"]+)['"]|<reference\s+types=['"]([^'"]+)['"]/g

/**
 * The bare module specifiers that the declarations of one export load: the types file and
 * every declaration file it reaches through relative imports.
 */
export function importsOf(dir, typesFile) {
  const seen = new Set()
  const bare = new Set()
  const visit = (file) => {
    if (seen.has(file) || !existsSync(file)) return
    seen.add(file)
    for (const m of readFileSync(file, 'utf8').matchAll(SPECIFIER)) {
      const spec = m[1] ?? m[2]
      if (spec.startsWith('.')) visit(join(dirname(file), spec.replace(/\.js$/, '.d.ts')))
      else bare.add(spec)
    }
  }
  visit(join(dir, typesFile))
  return bare
}

/** Modules the declarations of `pkg`'s exports load that neither its dependencies nor that export's peers provide. */
export function leaks(dir, pkg) {
  const found = []
  const root = (spec) => (spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0])
  for (const [sub, entry] of Object.entries(pkg.exports ?? {})) {
    if (typeof entry !== 'object' || !entry.types) continue
    const name = sub === '.' ? pkg.name : `${pkg.name}${sub.slice(1)}`
    const allowed = new Set([
      pkg.name,
      ...Object.keys(pkg.dependencies ?? {}),
      ...(SUBPATHS[name]?.peers ?? []),
    ])
    for (const spec of importsOf(dir, entry.types)) {
      if (spec.startsWith('node:') || allowed.has(root(spec))) continue
      found.push(`${name}'s types load '${spec}', which is neither a dependency nor a peer of that export`)
    }
  }
  return found
}

/** The workspace's installed copy of `name`, looked up from the packages that use it. */
function installed(name) {
  for (const dir of [...packages.map((p) => p.dir), ROOT]) {
    const at = join(dir, 'node_modules', name)
    if (existsSync(join(at, 'package.json'))) return realpathSync(at)
  }
  throw new Error(`${name} is not installed in the workspace: run pnpm install`)
}

function link(nodeModules, name, target) {
  const at = join(nodeModules, name)
  if (existsSync(at)) return
  mkdirSync(dirname(at), { recursive: true })
  symlinkSync(target, at, 'dir')
}

async function pack(work) {
  const out = join(work, 'tarballs')
  mkdirSync(out)
  const pnpm = join(ROOT, 'node_modules', '.bin', 'pnpm')
  const unpacked = new Map()
  await Promise.all(
    packages.map(async ({ dir, pkg }) => {
      await run(pnpm, ['pack', '--pack-destination', out], { cwd: dir })
      const tgz = readdirSync(out).find((f) => f.startsWith(`${pkg.name.slice(1).replace('/', '-')}-`))
      const into = join(work, 'unpacked', pkg.name)
      mkdirSync(into, { recursive: true })
      await run('tar', ['-xzf', join(out, tgz), '-C', into, '--strip-components=1'])
      unpacked.set(pkg.name, into)
    }),
  )
  return unpacked
}

async function checkVariant(work, unpacked, variant, index) {
  const project = join(work, `consumer-${index}`)
  const nodeModules = join(project, 'node_modules')
  mkdirSync(nodeModules, { recursive: true })
  for (const [name, dir] of unpacked) {
    const pkg = readJson(join(dir, 'package.json'))
    for (const [dep, range] of Object.entries(pkg.dependencies ?? {})) {
      if (String(range).startsWith('workspace:')) {
        throw new Error(`${name}'s packed package.json still says ${dep}@${range}`)
      }
      if (!unpacked.has(dep)) link(nodeModules, dep, installed(dep))
    }
    // The tarball itself, copied (a symlink would let TypeScript see the workspace around it).
    cpSync(dir, join(nodeModules, name), { recursive: true })
  }
  for (const name of variant.install) link(nodeModules, name, installed(name))
  link(nodeModules, '@types/node', installed('@types/node'))
  for (const file of variant.files) cpSync(join(CONSUMER, file), join(project, file))
  writeFileSync(
    join(project, 'package.json'),
    `${JSON.stringify({ name: 'consumer', private: true, type: 'module' })}\n`,
  )
  writeFileSync(
    join(project, 'tsconfig.json'),
    `${JSON.stringify({ ...TSCONFIG, files: variant.files }, null, 2)}\n`,
  )
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const t0 = performance.now()
  try {
    await run(process.execPath, [tsc, '-p', project], { cwd: project })
    return { variant, ok: true, ms: performance.now() - t0 }
  } catch (err) {
    return { variant, ok: false, output: `${err.stdout ?? ''}${err.stderr ?? ''}` || String(err) }
  }
}

export async function main() {
  const started = performance.now()
  const gaps = coverageGaps()
  if (gaps.length > 0) {
    console.log(
      `FAIL types: ${gaps.join(', ')} not covered: add them to SUBPATHS or MAIN_ENTRY_PEERS in scripts/check-types.mjs`,
    )
    return 1
  }
  const work = mkdtempSync(join(tmpdir(), 'resilient-types-'))
  try {
    const unpacked = await pack(work)
    const packedAt = performance.now()
    let failed = 0
    for (const [name, dir] of unpacked) {
      for (const leak of leaks(dir, readJson(join(dir, 'package.json')))) {
        failed++
        console.log(`FAIL types: ${leak}`)
      }
      if (failed === 0)
        console.log(`ok   types: ${name}: each export's declarations load only its dependencies and peers`)
    }
    const results = await Promise.all(variants().map((v, i) => checkVariant(work, unpacked, v, i)))
    for (const r of results) {
      if (r.ok) console.log(`ok   types: ${r.variant.name} (${(r.ms / 1000).toFixed(1)} s)`)
      else {
        failed++
        console.log(`FAIL types: ${r.variant.name}\n${r.output}`)
      }
    }
    const s = (ms) => `${(ms / 1000).toFixed(1)} s`
    console.log(
      `types: packed in ${s(packedAt - started)}, ${results.length} consumer projects checked in ${s(performance.now() - packedAt)}`,
    )
    return failed > 0 ? 1 : 0
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main()
}
