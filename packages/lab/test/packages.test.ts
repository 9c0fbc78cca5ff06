import { describe, expect, it } from 'vitest'
import {
  ensurePackages,
  missingPackages,
  missingPackagesError,
  requirements,
  which,
} from '../src/packages.js'

describe('package checks', () => {
  it('lists what each option needs', () => {
    const pkgs = (o: Parameters<typeof requirements>[0]) =>
      [...new Set(requirements(o).map((r) => r.pkg))].sort()
    expect(pkgs({ nodes: 3, redis: true, sentinel: true })).toEqual([
      'etcd-server',
      'patroni',
      'postgresql-15',
      'postgresql-client-15',
      'redis-sentinel',
      'redis-server',
    ])
    expect(pkgs({ nodes: 0, redis: true, sentinel: false })).toEqual(['redis-server'])
    expect(pkgs({ nodes: 1, redis: false, sentinel: false })).not.toContain('redis-server')
  })

  it('names the missing Debian packages, deduplicated', () => {
    const reqs = requirements({ nodes: 3, redis: true, sentinel: false })
    expect(missingPackages(reqs, (b) => !b.includes('postgresql') && b !== 'etcd')).toEqual([
      'etcd-server',
      'postgresql-15',
      'postgresql-client-15',
    ])
    expect(missingPackages(reqs, () => true)).toEqual([])
  })

  it('the error message says exactly what to install', () => {
    const err = missingPackagesError(['etcd-server', 'patroni'])
    expect(err.message).toContain('etcd-server patroni')
    expect(err.message).toContain('apt-get install -y etcd-server patroni')
  })

  it('not root: throws naming the packages, installs nothing', () => {
    const calls: string[][] = []
    expect(() =>
      ensurePackages(requirements({ nodes: 0, redis: true, sentinel: true }), () => {}, {
        exists: () => false,
        isRoot: false,
        run: (cmd, args) => calls.push([cmd, ...args]),
      }),
    ).toThrow(/redis-sentinel redis-server/)
    expect(calls).toEqual([])
  })

  it('root: apt-get update once, then install -y the missing packages', () => {
    const calls: string[][] = []
    let installed = false
    ensurePackages(requirements({ nodes: 0, redis: true, sentinel: false }), () => {}, {
      exists: () => installed,
      isRoot: true,
      run: (cmd, args) => {
        calls.push([cmd, ...args])
        if (args[0] === 'install') installed = true
      },
    })
    expect(calls).toEqual([
      ['apt-get', 'update'],
      ['apt-get', 'install', '-y', '--no-install-recommends', 'redis-server'],
    ])
  })

  it('root: still missing after apt-get is an error', () => {
    expect(() =>
      ensurePackages(requirements({ nodes: 0, redis: true, sentinel: false }), () => {}, {
        exists: () => false,
        isRoot: true,
        run: () => {},
      }),
    ).toThrow(/redis-server/)
  })

  it('which finds executables on PATH', () => {
    expect(which('sh')).toMatch(/\/sh$/)
    expect(which('no-such-binary-xyz')).toBeUndefined()
  })
})
