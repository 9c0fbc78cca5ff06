import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Resolves true when a listening socket can be bound on host:port right now. */
export function canListen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen({ port, host, exclusive: true }, () => {
      server.close(() => resolve(true))
    })
  })
}

/** Asks the kernel for a free port by binding port 0 on host. */
export function kernelPort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address()
      const port = typeof address === 'object' && address ? address.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not read the bound port'))))
    })
  })
}

/** The kernel's ephemeral range (outgoing connections take their local ports from it). */
export function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)
    const low = Number(lo)
    const high = Number(hi)
    if (Number.isInteger(low) && Number.isInteger(high) && low > 0 && high >= low) return [low, high]
  } catch {
    // not Linux
  }
  return [32768, 60999]
}

/**
 * The range lab ports are drawn from: below the ephemeral range, so that a client socket's
 * local port can never take the port of a server that is down for a chaos test (a restart on
 * the same port would then fail). Falls back to the kernel's choice (port 0) when empty.
 */
export function labPortRange(): [number, number] {
  const [ephemeralLow] = ephemeralRange()
  const high = Math.min(ephemeralLow - 1, 65535)
  const low = Math.max(1024, Math.min(15000, high - 2000))
  return high - low >= 100 ? [low, high] : [0, 0]
}

/**
 * Hands out ports that are free now and not held by another lab on this machine.
 *
 * Each port is checked by binding it on 127.0.0.1, then reserved with a file created with
 * O_EXCL in a folder shared by all labs (`<tmpdir>/resilient-lab-ports/<port>`, holding the
 * lab folder). A reservation whose lab folder no longer exists is stale and reclaimed, so two
 * labs, in one process or in two, never get the same port even before their servers bind.
 */
export class PortAllocator {
  readonly reserved: number[] = []
  readonly #owner: string
  readonly #dir: string
  readonly #range: [number, number]
  readonly #random: () => number

  constructor(
    owner: string,
    opts: { registryDir?: string; range?: [number, number]; random?: () => number } = {},
  ) {
    this.#owner = owner
    this.#dir = opts.registryDir ?? defaultRegistryDir()
    this.#range = opts.range ?? labPortRange()
    this.#random = opts.random ?? Math.random
    mkdirSync(this.#dir, { recursive: true, mode: 0o1777 })
  }

  async next(): Promise<number> {
    const [low, high] = this.#range
    for (let attempt = 0; attempt < 200; attempt++) {
      const port =
        high > 0 && high >= low
          ? low + Math.floor(this.#random() * (high - low + 1))
          : await kernelPort('127.0.0.1')
      if (this.reserved.includes(port)) continue
      if (!this.#reserve(port)) continue
      if (!(await canListen(port))) {
        this.#unreserve(port)
        continue
      }
      this.reserved.push(port)
      return port
    }
    throw new Error('could not find a free port on 127.0.0.1 after 200 attempts')
  }

  async many(n: number): Promise<number[]> {
    const ports: number[] = []
    for (let i = 0; i < n; i++) ports.push(await this.next())
    return ports
  }

  /** Drops this lab's reservations (on down()). */
  release(): void {
    for (const port of this.reserved.splice(0)) this.#unreserve(port)
  }

  #reserve(port: number): boolean {
    const file = join(this.#dir, String(port))
    for (let i = 0; i < 2; i++) {
      try {
        writeFileSync(file, this.#owner, { flag: 'wx', mode: 0o666 })
        return true
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false
        if (!isStale(file)) return false
        rmSync(file, { force: true })
      }
    }
    return false
  }

  #unreserve(port: number): void {
    const file = join(this.#dir, String(port))
    try {
      if (readFileSync(file, 'utf8') === this.#owner) rmSync(file, { force: true })
    } catch {
      // already gone
    }
  }
}

export function defaultRegistryDir(): string {
  return join(tmpdir(), 'resilient-lab-ports')
}

/** Removes the reservations a lab holds (used when rehydrated from a state file). */
export function releasePorts(owner: string, ports: number[], registryDir = defaultRegistryDir()): void {
  for (const port of ports) {
    const file = join(registryDir, String(port))
    try {
      if (readFileSync(file, 'utf8') === owner) rmSync(file, { force: true })
    } catch {
      // already gone
    }
  }
}

function isStale(file: string): boolean {
  try {
    const owner = readFileSync(file, 'utf8')
    // Empty: another process is between creating and writing it; stale only when old.
    if (!owner) return Date.now() - statSync(file).mtimeMs > 5_000
    statSync(owner)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'
  }
}
