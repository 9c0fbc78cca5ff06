import * as grpc from '@grpc/grpc-js'
import { healthServiceDefinition } from '@resilient/health/grpc'

/** A grpc.health.v1 client of @grpc/grpc-js, as a load balancer or the kubelet would use. */
export type HealthClient = grpc.Client & {
  Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void
  Watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>
  List(
    req: object,
    cb: (err: grpc.ServiceError | null, res?: { statuses: Record<string, { status: string }> }) => void,
  ): void
}

const Health = grpc.makeGenericClientConstructor(healthServiceDefinition, 'Health')

export function healthClient(port: number): HealthClient {
  return new Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as HealthClient
}

export function check(client: HealthClient, service: string): Promise<string> {
  return new Promise((resolve, reject) => {
    client.Check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status)))
  })
}

/** A Watch stream and every status it received, with a way to wait for the next one. */
export function watch(client: HealthClient, service: string) {
  const seen: { status: string; at: number }[] = []
  const stream = client.Watch({ service })
  const waiters = new Set<() => void>()
  const wake = () => {
    for (const w of waiters) w()
  }
  let ended = false
  stream.on('data', (m: { status: string }) => {
    seen.push({ status: m.status, at: performance.now() })
    wake()
  })
  stream.on('error', () => {
    ended = true
    wake()
  })
  stream.on('end', () => {
    ended = true
    wake()
  })
  return {
    seen,
    stream,
    get ended() {
      return ended
    },
    statuses: () => seen.map((s) => s.status),
    /** Resolves with the first status (from index `from` on) equal to `status`. */
    async until(status: string, timeoutMs = 10_000, from = 0): Promise<{ status: string; at: number }> {
      const deadline = performance.now() + timeoutMs
      for (;;) {
        const hit = seen.slice(from).find((s) => s.status === status)
        if (hit) return hit
        if (ended) throw new Error(`Watch(${service}) ended without ${status}: ${JSON.stringify(seen)}`)
        const left = deadline - performance.now()
        if (left <= 0)
          throw new Error(`Watch(${service}): no ${status} within ${timeoutMs} ms: ${JSON.stringify(seen)}`)
        await new Promise<void>((r) => {
          const timer = setTimeout(done, left)
          function done() {
            clearTimeout(timer)
            waiters.delete(done)
            r()
          }
          waiters.add(done)
        })
      }
    },
  }
}

export function startServer(server: grpc.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    )
  })
}
