// One server of bench/health/probe.bench.mjs, in its own process: `node probe-server.mjs bare|health`.
// Prints {"port":N} once listening. GET /calls (health only) returns the check call counts.
import http from 'node:http'
import { createHealth } from '../../packages/health/dist/index.js'

const variant = process.argv[2]
let handler
if (variant === 'health') {
  const health = createHealth({
    intervalMs: 2_000,
    checks: {
      postgres: { check: async () => ({ status: 'pass' }) },
      redis: { check: async () => true, critical: false },
    },
  })
  await health.refresh()
  handler = (req, res) => {
    if (req.url === '/calls') return res.end(JSON.stringify(health.checkCalls()))
    health.readiness(req, res)
  }
} else if (variant === 'bare') {
  // The same headers and a body of the same size as health's answer, precomputed.
  const body = process.argv[3]
  const headers = {
    'content-type': 'application/health+json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(body),
  }
  handler = (_req, res) => {
    res.writeHead(200, headers)
    res.end(body)
  }
} else {
  throw new Error(`unknown variant ${variant}`)
}
const server = http.createServer(handler)
server.listen(0, '127.0.0.1', () =>
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`),
)
process.on('SIGTERM', () => process.exit(0))
