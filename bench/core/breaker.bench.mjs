/**
 * Cost of a circuit breaker per call, side by side in one run:
 *   bare async call | @resilient/core createBreaker | opossum 9 (defaults) | opossum 9 (tuned
 *   like ours) | cockatiel 3 (SamplingBreaker) — closed (call passes) and open (call rejected).
 *
 * Run:  npx tsc -b packages/core && node --expose-gc bench/core/breaker.bench.mjs
 * Env:  ROUNDS (default 15), ITERATIONS (default 20000),
 *       BASELINE_CORE (optional: the path of another build's dist/index.js, e.g. a copy of
 *       packages/core/dist from an older commit; adds a row for its breaker, side by side)
 * Out:  a markdown table on stdout and bench/out/core-breaker.json
 *
 * Every breaker is configured to the same policy where the library allows it: open above 50%
 * failures in a 10 s window once 10 calls were seen, half-open after 60 s (so an open breaker
 * stays open for the whole run). "opossum defaults" is `new CircuitBreaker(fn)` as most code
 * uses it (10 s timeout timer per call, rolling percentiles, snapshot timer).
 */
import { circuitBreaker, handleAll, SamplingBreaker } from 'cockatiel'
import CircuitBreaker from 'opossum'
import { createBreaker, metrics } from '../../packages/core/dist/index.js'
import { fmtNs, markdownTable, ratio, rounds, writeJson } from '../lib/measure.mjs'

const ROUNDS = Number(process.env.ROUNDS ?? 15)
const ITERATIONS = Number(process.env.ITERATIONS ?? 20_000)
const noop = () => {}
const work = async () => 1
// Declares the signal parameter, so the breaker must create an AbortSignal for each call.
const workWithSignal = async (signal) => (signal ? 1 : 0)

const RESET_MS = 60_000

// --- closed breakers ---------------------------------------------------------------------
const ours = createBreaker({
  name: 'bench',
  errorThresholdPercentage: 50,
  volumeThreshold: 10,
  resetTimeoutMs: RESET_MS,
})
const oursTimeout = createBreaker({
  name: 'bench-timeout',
  errorThresholdPercentage: 50,
  volumeThreshold: 10,
  resetTimeoutMs: RESET_MS,
  timeoutMs: 10_000,
})
const baseline = process.env.BASELINE_CORE
  ? (await import(process.env.BASELINE_CORE)).createBreaker({
      name: 'bench-baseline',
      errorThresholdPercentage: 50,
      volumeThreshold: 10,
      resetTimeoutMs: RESET_MS,
    })
  : undefined
const opossumDefault = new CircuitBreaker(work, { resetTimeout: RESET_MS })
const opossumTuned = new CircuitBreaker(work, {
  timeout: false,
  errorThresholdPercentage: 50,
  volumeThreshold: 10,
  resetTimeout: RESET_MS,
  rollingPercentilesEnabled: false,
  enableSnapshots: false,
})
const cockatielSampling = () =>
  circuitBreaker(handleAll, {
    halfOpenAfter: RESET_MS,
    // 50% over 10 s, and at least 1 call/s on average (10 calls in the window) before it may open.
    breaker: new SamplingBreaker({ threshold: 0.5, duration: 10_000, minimumRps: 1 }),
  })
const cockatiel = cockatielSampling()

// --- open breakers -----------------------------------------------------------------------
const oursOpen = createBreaker({ name: 'bench-open', resetTimeoutMs: RESET_MS })
oursOpen.open()
const opossumDefaultOpen = new CircuitBreaker(work, { resetTimeout: RESET_MS })
opossumDefaultOpen.open()
const opossumTunedOpen = new CircuitBreaker(work, {
  timeout: false,
  resetTimeout: RESET_MS,
  rollingPercentilesEnabled: false,
  enableSnapshots: false,
})
opossumTunedOpen.open()
const cockatielOpen = cockatielSampling()
cockatielOpen.isolate()

// Sanity: every open breaker really rejects, every closed one really passes.
for (const [name, p] of [
  ['ours open', oursOpen.execute(work)],
  ['opossum open', opossumDefaultOpen.fire()],
  ['opossum tuned open', opossumTunedOpen.fire()],
  ['cockatiel open', cockatielOpen.execute(work)],
]) {
  if (
    await p.then(
      () => true,
      () => false,
    )
  )
    throw new Error(`${name} did not reject`)
}
for (const p of [
  ours.execute(work),
  oursTimeout.execute(work),
  opossumDefault.fire(),
  opossumTuned.fire(),
  cockatiel.execute(work),
]) {
  if ((await p) !== 1) throw new Error('a closed breaker did not pass the call')
}

const cases = {
  bare: () => work(),
  '@resilient/core': () => ours.execute(work),
  ...(baseline ? { [`baseline ${process.env.BASELINE_CORE}`]: () => baseline.execute(work) } : {}),
  '@resilient/core + timeoutMs': () => oursTimeout.execute(work),
  '@resilient/core + timeoutMs, fn takes the signal': () => oursTimeout.execute(workWithSignal),
  'opossum 9 defaults': () => opossumDefault.fire(),
  'opossum 9 tuned': () => opossumTuned.fire(),
  'cockatiel 3 SamplingBreaker': () => cockatiel.execute(work),
  'reference: new AbortController().signal': () => new AbortController().signal,
  'open: bare Promise.reject(new Error)': () => Promise.reject(new Error('x')).catch(noop),
  'open: @resilient/core': () => oursOpen.execute(work).catch(noop),
  'open: opossum 9 defaults': () => opossumDefaultOpen.fire().catch(noop),
  'open: opossum 9 tuned': () => opossumTunedOpen.fire().catch(noop),
  'open: cockatiel 3': () => cockatielOpen.execute(work).catch(noop),
}

const started = Date.now()
const result = await rounds(cases, {
  rounds: ROUNDS,
  iterations: ITERATIONS,
  onRound: (r, n) => process.stderr.write(`\rround ${r}/${n}`),
})
process.stderr.write('\n')
const seconds = (Date.now() - started) / 1000

const base = result.bare.median
const rows = Object.entries(result).map(([name, s]) => [
  name,
  fmtNs(s.median),
  fmtNs(s.p99),
  ratio(s.median, base),
])
console.log(
  `\nBreaker cost per call, ${ROUNDS} interleaved rounds of ${ITERATIONS} sequential awaited calls, ` +
    `median (and p99) of the per-round ns/call; OpenTelemetry API ${metrics.available ? 'installed' : 'absent'}, ` +
    `no MeterProvider. Node ${process.version}, ${seconds.toFixed(1)} s.\n`,
)
console.log(markdownTable(['case', 'median ns/call', 'p99 over rounds', 'vs bare call'], rows))

// opossum keeps one latency sample per call in its window even with percentiles off.
const samplesHeld = (cb) => cb.status.window.reduce((n, bucket) => n + bucket.latencyTimes.length, 0)
const held = {
  'opossum 9 tuned': samplesHeld(opossumTuned),
  'opossum 9 defaults': samplesHeld(opossumDefault),
}
console.log(
  `\nLatency samples opossum holds in its window after the run: ${JSON.stringify(held)} (ours: 0 by design)`,
)

const file = writeJson('core-breaker', {
  rounds: ROUNDS,
  iterations: ITERATIONS,
  seconds,
  results: Object.fromEntries(
    Object.entries(result).map(([k, s]) => [
      k,
      { medianNs: s.median, p99Ns: s.p99, minNs: s.min, maxNs: s.max, vsBare: s.median / base },
    ]),
  ),
  opossumLatencySamplesHeld: held,
})
console.log(`\nwrote ${file}`)

for (const b of [ours, oursTimeout, oursOpen, baseline]) b?.shutdown()
for (const cb of [opossumDefault, opossumTuned, opossumDefaultOpen, opossumTunedOpen]) cb.shutdown()
