#!/usr/bin/env node
// Measures how long startLab() takes to reach "1 leader + N-1 streaming replicas".
// Usage (from the repo root, after `npx tsc -b packages/lab`):
//   node packages/lab/scripts/measure-boot.mjs [runs=5] [nodes=3]
import { startLab } from '../dist/index.js'

const runs = Number(process.argv[2] ?? 5)
const nodes = Number(process.argv[3] ?? 3)
const times = []
for (let i = 0; i < runs; i++) {
  const t0 = performance.now()
  const lab = await startLab({ nodes })
  const ready = (performance.now() - t0) / 1000
  const t1 = performance.now()
  await lab.down()
  const down = (performance.now() - t1) / 1000
  times.push(ready)
  console.log(`run ${i + 1}: ready in ${ready.toFixed(1)} s, down in ${down.toFixed(2)} s`)
}
times.sort((a, b) => a - b)
const median = times[Math.floor(times.length / 2)]
console.log(
  `nodes=${nodes} runs=${runs}: min ${times[0].toFixed(1)} s, median ${median.toFixed(1)} s, max ${times.at(-1).toFixed(1)} s`,
)
