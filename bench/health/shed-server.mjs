// The service of bench/health/shed.bench.mjs, in its own process:
//   node shed-server.mjs plain|shed
// An Express app shaped like examples/express-library's book route: GET /books/:id waits
// DB_MS (a query) then spends CPU_MS of CPU (building and serializing the answer), with
// @resilient/health's routes mounted first; `shed` turns load shedding on. Prints {"port":N}.
import express from 'express'
import { healthRoutes } from '../../packages/health/dist/express.js'
import { createHealth } from '../../packages/health/dist/index.js'

const variant = process.argv[2]
const DB_MS = Number(process.env.DB_MS ?? 5)
const CPU_MS = Number(process.env.CPU_MS ?? 1)
const MAX_DELAY_MS = Number(process.env.MAX_DELAY_MS ?? 10)
const SAMPLE_MS = Number(process.env.SAMPLE_MS ?? 10)
const health = createHealth({
  checks: { db: async () => true },
  ...(variant === 'shed' ? { shed: { maxEventLoopDelayMs: MAX_DELAY_MS, sampleIntervalMs: SAMPLE_MS } } : {}),
})
await health.refresh()
const app = express()
app.disable('x-powered-by')
app.use(healthRoutes(health))
app.get('/stats', (_req, res) => {
  res.json(health.shedStats() ?? {})
})
app.get('/books/:id', async (req, res) => {
  await new Promise((r) => setTimeout(r, DB_MS))
  const end = performance.now() + CPU_MS
  let x = 0
  while (performance.now() < end) x++
  res.json({ id: Number(req.params.id), title: 'A book', author: 'Someone', spins: x })
})
const server = app.listen(0, '127.0.0.1', () =>
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`),
)
server.keepAliveTimeout = 60_000
process.on('SIGTERM', () => process.exit(0))
