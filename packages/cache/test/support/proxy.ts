import { createConnection, createServer, type Server, type Socket } from 'node:net'

/**
 * A TCP proxy on port 0 in front of a real Redis, for network faults a server cannot show:
 * `blackhole()` stops forwarding bytes on the connections it picks, in both directions,
 * without closing them (a half-open connection, a dropped NAT entry, a network partition
 * with no reset). New connections are forwarded normally (unless `refuseNew`).
 */
export interface ProxyConnection {
  readonly id: number
  /** What the client sent first (e.g. whether it subscribed). */
  readonly sent: string
  blackholed: boolean
}

export class TcpProxy {
  readonly connections: ProxyConnection[] = []
  port = 0
  #server: Server
  #sockets = new Set<Socket>()
  #target: number
  #next = 0

  private constructor(target: number) {
    this.#target = target
    this.#server = createServer((client) => this.#accept(client))
  }

  static async start(targetPort: number): Promise<TcpProxy> {
    const p = new TcpProxy(targetPort)
    await new Promise<void>((resolve) => p.#server.listen(0, '127.0.0.1', resolve))
    const addr = p.#server.address()
    p.port = typeof addr === 'object' && addr ? addr.port : 0
    return p
  }

  #accept(client: Socket): void {
    const upstream = createConnection({ host: '127.0.0.1', port: this.#target })
    const conn = { id: this.#next++, sent: '', blackholed: false }
    this.connections.push(conn)
    this.#sockets.add(client)
    this.#sockets.add(upstream)
    client.on('data', (d) => {
      if (conn.sent.length < 4096) conn.sent += d.toString('latin1')
      if (!conn.blackholed) upstream.write(d)
    })
    upstream.on('data', (d) => {
      if (!conn.blackholed) client.write(d)
    })
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('close', end)
    upstream.on('close', end)
    client.on('error', () => {})
    upstream.on('error', () => {})
  }

  /** Stops forwarding on the connections `which` picks (default: all open now). */
  blackhole(which: (c: ProxyConnection) => boolean = () => true): number {
    let n = 0
    for (const c of this.connections) {
      if (!c.blackholed && which(c)) {
        c.blackholed = true
        n++
      }
    }
    return n
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }
}
