// publint and attw (--profile esm-only) for every publishable package, then the published
// types in a user's strict project (scripts/check-types.mjs). Exits 1 on any problem.
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { main as checkTypes } from './check-types.mjs'

const root = new URL('..', import.meta.url).pathname
const bin = (name) => join(root, 'node_modules', '.bin', name)
// publint packs with pnpm: the workspace's own pnpm, first on the PATH.
const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}` }
let failed = 0
for (const dir of readdirSync(join(root, 'packages'))) {
  const cwd = join(root, 'packages', dir)
  const pkg = JSON.parse(readFileSync(join(cwd, 'package.json'), 'utf8'))
  if (pkg.private) continue
  for (const [cmd, args] of [
    ['publint', ['--strict']],
    ['attw', ['--pack', '.', '--profile', 'esm-only', '--format', 'table-flipped']],
  ]) {
    try {
      execFileSync(bin(cmd), args, { cwd, stdio: 'pipe', encoding: 'utf8', env })
      console.log(`ok   ${cmd} ${pkg.name}`)
    } catch (err) {
      failed++
      console.log(`FAIL ${cmd} ${pkg.name}\n${err.stdout ?? ''}${err.stderr ?? ''}`)
    }
  }
}
if ((await checkTypes()) !== 0) failed++
if (failed) process.exit(1)
