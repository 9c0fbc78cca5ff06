/**
 * What one discovery poll costs the client: Patroni `GET /cluster` (3 endpoints, Patroni 3
 * answers HTTP/1.0, so a new TCP connection per poll) and static discovery (3 hosts, kept
 * probe connections, `pg_is_in_recovery()` + WAL position), polled back to back.
 *
 * Run:  npx tsc -b packages/lab packages/pg-router && node bench/pg-router/discovery.bench.mjs
 * Env:  POLLS (default 300)
 * Out:  a markdown table on stdout and bench/out/pg-router-discovery.json
 */
import { loadavg } from 'node:os'
import { startLab } from '../../packages/lab/dist/index.js'
import { createPatroniDiscovery, createStaticDiscovery } from '../../packages/pg-router/dist/index.js'
import { markdownTable, median, percentile, writeJson } from '../lib/measure.mjs'

const POLLS = Number(process.env.POLLS ?? 300)
const lab = await startLab({ nodes: 3, redis: false })
try {
  await lab.waitForReplicas(2)
  const { user, password, database } = lab.postgres
  const discoveries = {
    'Patroni GET /cluster': createPatroniDiscovery({ endpoints: lab.patroni.endpoints }),
    'static, 3 hosts': createStaticDiscovery({
      hosts: lab.members.map((m) => ({ host: m.host, port: m.port })),
      connection: { user, password, database },
    }),
  }
  const rows = []
  const json = {}
  for (const [name, d] of Object.entries(discoveries)) {
    for (let i = 0; i < 20; i++) await d.discover()
    const wall = []
    const c0 = process.cpuUsage()
    for (let i = 0; i < POLLS; i++) {
      const t0 = performance.now()
      await d.discover()
      wall.push(performance.now() - t0)
    }
    const c = process.cpuUsage(c0)
    const cpuUs = (c.user + c.system) / POLLS
    rows.push([
      name,
      `${cpuUs.toFixed(0)} µs`,
      `${median(wall).toFixed(2)} ms`,
      `${percentile(wall, 99).toFixed(2)} ms`,
    ])
    json[name] = { cpuUsPerPoll: cpuUs, wallMedianMs: median(wall), wallP99Ms: percentile(wall, 99) }
    await d.close()
  }
  console.log(
    `\nload average: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}; ${POLLS} polls each\n`,
  )
  console.log(markdownTable(['discovery', 'client CPU per poll', 'median poll', 'p99 poll'], rows))
  console.log(`\nwrote ${writeJson('pg-router-discovery', { polls: POLLS, results: json })}`)
} finally {
  await lab.down()
}
