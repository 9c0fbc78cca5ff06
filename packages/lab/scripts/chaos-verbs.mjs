#!/usr/bin/env node
// Runs every chaos verb of the lab once, on a lab with or without TLS, and prints how long each
// took: the check that every verb works in secure mode, and the figures of the README's
// "Secure mode" section.
// Usage (from the repo root, after `npx tsc -b packages/lab`):
//   node packages/lab/scripts/chaos-verbs.mjs [tls|plain|both]   (default both: plain, then TLS)
import { loadavg } from 'node:os'
import { startLab } from '../dist/index.js'

const mode = process.argv[2] ?? 'both'
const modes = mode === 'both' ? [false, true] : [mode === 'tls']

async function timed(rows, verb, fn) {
  const t0 = performance.now()
  const detail = await fn()
  const s = (performance.now() - t0) / 1000
  rows.push([verb, s, detail ?? ''])
  console.log(`  ${verb.padEnd(44)} ${s.toFixed(1).padStart(5)} s  ${detail ?? ''}`)
}

async function run(tls) {
  const rows = []
  console.log(`\n== ${tls ? 'tls: true' : 'plain'} (load average ${loadavg()[0].toFixed(1)})`)
  const t0 = performance.now()
  const [lab, sentinelLab] = await Promise.all([
    startLab({ nodes: 3, tls, redisReplica: true, redisCluster: true }),
    startLab({ nodes: 0, tls, sentinel: true }),
  ])
  console.log(
    `  both labs up in ${((performance.now() - t0) / 1000).toFixed(1)} s (${lab.bootSeconds} s, ${sentinelLab.bootSeconds} s)`,
  )
  try {
    let killed
    await timed(rows, 'killPrimary + waitForPrimary', async () => {
      killed = await lab.killPrimary()
      return `${killed} -> ${(await lab.waitForPrimary({ not: killed })).name}`
    })
    await timed(rows, 'startMember (old primary)', async () => {
      const r = await lab.startMember(killed)
      return `${r.role}${r.reinitialized ? ' (re-cloned)' : ''}`
    })
    await timed(rows, 'waitForReplicas(2)', async () =>
      (await lab.waitForReplicas(2)).map((m) => m.name).join(','),
    )
    await timed(rows, 'switchover', async () => (await lab.switchover()).name)
    await timed(rows, 'waitForReplicas(2)', async () =>
      (await lab.waitForReplicas(2)).map((m) => m.name).join(','),
    )
    const replica = (await lab.replicas())[0].name
    await timed(rows, 'stopMember(replica, graceful) + startMember', async () => {
      await lab.stopMember(replica, { graceful: true })
      return (await lab.startMember(replica)).role
    })
    await timed(rows, 'setReadOnly(true) / (false)', async () => {
      await lab.setReadOnly(true)
      await lab.setReadOnly(false)
    })
    await timed(rows, 'pauseReplay / resumeReplay', async () => {
      const paused = await lab.pauseReplay()
      await lab.resumeReplay()
      return paused.join(',')
    })
    let frozen
    await timed(rows, 'freezePrimary + waitForPrimary', async () => {
      frozen = await lab.freezePrimary()
      return `${frozen} -> ${(await lab.waitForPrimary({ not: frozen })).name}`
    })
    await timed(rows, 'thawMember + rejoinReplicas + waitForReplicas', async () => {
      await lab.thawMember(frozen)
      await lab.rejoinReplicas()
      await lab.waitForReplicas(2)
    })
    await timed(rows, 'freezeDcs / thawDcs + waitForPrimary', async () => {
      await lab.freezeDcs()
      await new Promise((r) => setTimeout(r, 1000))
      await lab.thawDcs()
      await lab.waitForPrimary()
      await lab.waitForReplicas(2)
    })
    await timed(rows, 'rotatePostgresPassword', () => lab.rotatePostgresPassword())
    await timed(rows, 'pauseRedis / resumeRedis', async () => {
      await lab.pauseRedis()
      await lab.resumeRedis()
    })
    await timed(rows, 'killRedis / restartRedis', async () => {
      await lab.killRedis()
      await lab.restartRedis()
    })
    await timed(rows, 'demoteRedisPrimary({ dropConnections })', async () => {
      const r = await lab.demoteRedisPrimary({ dropConnections: true })
      return `${r.demoted} -> ${r.promoted}`
    })
    await timed(rows, 'failoverRedisClusterMaster', async () => {
      const r = await lab.failoverRedisClusterMaster()
      return `${r.master} -> ${r.promoted}`
    })
    let master
    await timed(rows, 'killRedisClusterMaster', async () => {
      const r = await lab.killRedisClusterMaster()
      master = r.master
      return `${r.master} -> ${r.promoted}`
    })
    await timed(rows, 'restartRedisNode (cluster)', () => lab.restartRedisNode(master))
    let dead
    await timed(rows, 'Sentinel killRedisPrimary + waitForRedisFailover', async () => {
      dead = await sentinelLab.killRedisPrimary()
      return `${dead.name} -> ${(await sentinelLab.waitForRedisFailover()).port}`
    })
    await timed(rows, 'restartRedisNode (sentinel replica)', () => sentinelLab.restartRedisNode(dead.name))
    if (tls) {
      await timed(rows, 'rotateRedisPassword (servers + cluster)', () => lab.rotateRedisPassword())
      await timed(rows, 'rotateRedisPassword (servers + sentinels)', () => sentinelLab.rotateRedisPassword())
    }
    await timed(rows, 'status()', async () => {
      const st = await lab.status()
      return `${st.members.filter((m) => m.role === 'leader').length} leader, redis ${st.redis.map((r) => r.role).join('/')}`
    })
  } finally {
    await Promise.all([lab.down(), sentinelLab.down()])
  }
  return rows
}

const results = []
for (const tls of modes) results.push([tls, await run(tls)])
if (results.length === 2) {
  console.log('\nverb | plain | tls: true')
  console.log('---|---|---')
  const [plain, secure] = [results[0][1], results[1][1]]
  // Matched by name and occurrence (a verb can run twice; some run in TLS labs only).
  const key = (rows, i) => `${rows[i][0]}#${rows.slice(0, i).filter((r) => r[0] === rows[i][0]).length}`
  const plainBy = new Map(plain.map((r, i) => [key(plain, i), r[1]]))
  for (const [i, [verb, s]] of secure.entries()) {
    const p = plainBy.get(key(secure, i))
    console.log(`${verb} | ${p === undefined ? '-' : `${p.toFixed(1)} s`} | ${s.toFixed(1)} s`)
  }
}
console.log(
  `load average at the end: ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')}`,
)
