#!/usr/bin/env node
// Measures how long startLab() takes to reach "1 leader + N-1 streaming replicas".
// Usage (from the repo root, after `npx tsc -b packages/lab`):
//   node packages/lab/scripts/measure-boot.mjs [runs=5] [nodes=3] [plain|tls|compare]
// `compare` alternates a plain and a TLS lab in each run (same load for both).
import { loadavg } from 'node:os'
import { startLab } from '../dist/index.js'

const runs = Number(process.argv[2] ?? 5)
const nodes = Number(process.argv[3] ?? 3)
const mode = process.argv[4] ?? 'plain'
const variants = mode === 'compare' ? [false, true] : [mode === 'tls']
const times = new Map(variants.map((v) => [v, []]))
for (let i = 0; i < runs; i++) {
  for (const tls of variants) {
    const t0 = performance.now()
    const lab = await startLab({ nodes, tls })
    const ready = (performance.now() - t0) / 1000
    const t1 = performance.now()
    await lab.down()
    const down = (performance.now() - t1) / 1000
    times.get(tls).push(ready)
    console.log(
      `run ${i + 1}${tls ? ' (tls)' : ''}: ready in ${ready.toFixed(1)} s, down in ${down.toFixed(2)} s (load ${loadavg()[0].toFixed(1)})`,
    )
  }
}
for (const [tls, list] of times) {
  list.sort((a, b) => a - b)
  const median = list[Math.floor(list.length / 2)]
  console.log(
    `nodes=${nodes}${tls ? ' tls' : ''} runs=${runs}: min ${list[0].toFixed(1)} s, median ${median.toFixed(1)} s, max ${list.at(-1).toFixed(1)} s`,
  )
}
