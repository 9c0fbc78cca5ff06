import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { canListen, kernelPort, labPortRange, PortAllocator } from '../src/ports.js'

let registry: string
let owners: string[]

beforeEach(() => {
  registry = mkdtempSync(join(tmpdir(), 'lab-ports-test-'))
  owners = []
})

afterEach(() => {
  rmSync(registry, { recursive: true, force: true })
  for (const o of owners) rmSync(o, { recursive: true, force: true })
})

function owner(): string {
  const dir = mkdtempSync(join(tmpdir(), 'lab-owner-'))
  owners.push(dir)
  return dir
}

describe('free ports', () => {
  it('kernelPort binds port 0 and returns a port that is free', async () => {
    const port = await kernelPort()
    expect(port).toBeGreaterThan(0)
    expect(await canListen(port)).toBe(true)
  })

  it('canListen is false for a port in use', async () => {
    const server = createServer()
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const { port } = server.address() as { port: number }
    expect(await canListen(port)).toBe(false)
    await new Promise((r) => server.close(r))
  })

  it('the lab range lies below the kernel ephemeral range', () => {
    const [low, high] = labPortRange()
    const [ephemeralLow] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)
    expect(low).toBeGreaterThanOrEqual(1024)
    expect(high).toBeLessThan(Number(ephemeralLow))
  })

  it('hands out distinct, reserved, free ports', async () => {
    const dir = owner()
    const alloc = new PortAllocator(dir, { registryDir: registry })
    const ports = await alloc.many(20)
    expect(new Set(ports).size).toBe(20)
    expect(readdirSync(registry).map(Number).sort()).toEqual([...ports].sort())
    for (const p of ports) expect(readFileSync(join(registry, String(p)), 'utf8')).toBe(dir)
    alloc.release()
    expect(readdirSync(registry)).toEqual([])
  })

  it('two labs never get the same port, even from a tiny range', async () => {
    const range: [number, number] = [40100, 40109]
    const a = new PortAllocator(owner(), { registryDir: registry, range })
    const b = new PortAllocator(owner(), { registryDir: registry, range })
    const got = await Promise.all([a.many(4), b.many(4)])
    const all = got.flat()
    expect(new Set(all).size).toBe(8)
  })

  it('skips a port held by a live server', async () => {
    const server = createServer()
    await new Promise<void>((r) => server.listen(40200, '127.0.0.1', r))
    const alloc = new PortAllocator(owner(), { registryDir: registry, range: [40200, 40201] })
    expect(await alloc.next()).toBe(40201)
    await new Promise((r) => server.close(r))
  })

  it('reclaims a reservation whose lab folder is gone, keeps a live one', async () => {
    writeFileSync(join(registry, '40300'), '/tmp/no-such-lab-folder-xyz')
    const live = owner()
    writeFileSync(join(registry, '40301'), live)
    const alloc = new PortAllocator(owner(), { registryDir: registry, range: [40300, 40301] })
    expect(await alloc.next()).toBe(40300)
    await expect(alloc.next()).rejects.toThrow(/could not find a free port/)
    // A reservation being written (empty) is respected unless old.
    rmSync(join(registry, '40300'))
    writeFileSync(join(registry, '40300'), '')
    const other = new PortAllocator(owner(), { registryDir: registry, range: [40300, 40300] })
    await expect(other.next()).rejects.toThrow()
    const old = (Date.now() - 60_000) / 1000
    utimesSync(join(registry, '40300'), old, old)
    expect(await other.next()).toBe(40300)
  })
})
