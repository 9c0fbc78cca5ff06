import { execFileSync } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { PG_BIN_DIR } from './config.js'

export interface Requirement {
  /** Executable looked up on PATH, or an absolute path. */
  binary: string
  /** The Debian package that provides it. */
  pkg: string
}

/** What a lab needs, for these options. */
export function requirements(opts: {
  nodes: number
  redis: boolean
  sentinel: boolean
  redisCluster?: boolean
}): Requirement[] {
  const out: Requirement[] = []
  if (opts.nodes > 0) {
    out.push(
      { binary: 'patroni', pkg: 'patroni' },
      { binary: 'etcd', pkg: 'etcd-server' },
      { binary: `${PG_BIN_DIR}/psql`, pkg: 'postgresql-client-15' },
      { binary: `${PG_BIN_DIR}/postgres`, pkg: 'postgresql-15' },
      { binary: `${PG_BIN_DIR}/pg_rewind`, pkg: 'postgresql-15' },
    )
  }
  if (opts.redis || opts.sentinel || opts.redisCluster)
    out.push({ binary: 'redis-server', pkg: 'redis-server' })
  if (opts.sentinel) out.push({ binary: 'redis-sentinel', pkg: 'redis-sentinel' })
  return out
}

/** Absolute path of an executable, or undefined. */
export function which(binary: string, path = process.env.PATH ?? ''): string | undefined {
  const candidates = binary.includes('/')
    ? [binary]
    : path.split(delimiter).map((d) => join(d || '.', binary))
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // next
    }
  }
  return undefined
}

/** The Debian packages (deduplicated, sorted) providing the missing binaries. */
export function missingPackages(reqs: Requirement[], exists: (binary: string) => boolean): string[] {
  return [...new Set(reqs.filter((r) => !exists(r.binary)).map((r) => r.pkg))].sort()
}

export function missingPackagesError(pkgs: string[]): Error {
  return new Error(
    `@resilient/lab needs Debian packages that are not installed: ${pkgs.join(' ')}. ` +
      `Install them as root with: apt-get update && apt-get install -y ${pkgs.join(' ')}`,
  )
}

/**
 * Makes sure every binary is present. As root, installs what is missing with apt-get
 * (noninteractive; `apt-get update` once). Otherwise throws an Error naming the packages.
 */
export function ensurePackages(
  reqs: Requirement[],
  log: (line: string) => void,
  deps: {
    exists?: (binary: string) => boolean
    isRoot?: boolean
    run?: (cmd: string, args: string[]) => void
  } = {},
): void {
  const exists = deps.exists ?? ((b: string) => which(b) !== undefined)
  const missing = missingPackages(reqs, exists)
  if (missing.length === 0) return
  const isRoot = deps.isRoot ?? process.getuid?.() === 0
  if (!isRoot) throw missingPackagesError(missing)
  const run =
    deps.run ??
    ((cmd: string, args: string[]) => {
      execFileSync(cmd, args, {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
        timeout: 600_000,
      })
    })
  log(`installing missing packages: ${missing.join(' ')}`)
  try {
    run('apt-get', ['update'])
    run('apt-get', ['install', '-y', '--no-install-recommends', ...missing])
  } catch (err) {
    throw new Error(`apt-get install -y ${missing.join(' ')} failed: ${(err as Error).message}`, {
      cause: err,
    })
  }
  const still = missingPackages(reqs, exists)
  if (still.length > 0) throw missingPackagesError(still)
}
