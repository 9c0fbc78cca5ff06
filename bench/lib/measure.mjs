/**
 * bench/lib/measure.mjs — a tiny shared harness for side-by-side benchmarks.
 *
 * Rule of the house: compare things in ONE run, in interleaved rounds (A B C, B C A, ...),
 * and report medians over rounds plus ratios to a baseline. Never compare numbers taken in
 * different runs or on different machines.
 *
 * API
 *   await rounds(cases, { rounds = 15, iterations = 20_000, warmup = 2, onRound })
 *       cases: { name: fn } where fn is `() => unknown | Promise<unknown>`; every call of a
 *       round is awaited one after the other. Each round runs every case once for
 *       `iterations` calls, in a rotated order, and records ns per call for that round.
 *       `warmup` extra rounds run first and are dropped. Calls global.gc() between rounds
 *       when node runs with --expose-gc.
 *       -> { name: summary } where summary = { samples, median, p99, min, max, mean, n }
 *          (statistics over the per-round ns/call values)
 *   await timeEach(fn, n, { warmup = Math.min(100, n) })
 *       Times every call of `fn` on its own (for operations of microseconds or more: a
 *       query, an HTTP request). -> summary over the per-call ns values.
 *   summarize(values)          -> { samples, median, p99, min, max, mean, n }
 *   percentile(values, p)      -> the p-th percentile (0..100, nearest rank) of values
 *   median(values)
 *   fmtNs(ns)                  -> '123 ns', '4.56 µs', '7.89 ms'
 *   ratio(x, base)             -> '1.85x'
 *   markdownTable(headers, rows) -> a GitHub markdown table (rows: arrays of cells)
 *   writeJson(name, data)      -> writes bench/out/<name>.json (bench/out is gitignored),
 *                                 adds { node, platform, cpus, date } and returns the path
 *
 * Example
 *   import { rounds, markdownTable, fmtNs, ratio, writeJson } from '../lib/measure.mjs'
 *   const r = await rounds({ bare: () => f(), wrapped: () => g(f) }, { rounds: 10 })
 *   console.log(markdownTable(['case', 'ns/call', 'vs bare'],
 *     Object.entries(r).map(([k, s]) => [k, fmtNs(s.median), ratio(s.median, r.bare.median)])))
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, platform } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const OUT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'out')

export function percentile(values, p) {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

export function median(values) {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

export function summarize(values) {
  const n = values.length
  return {
    samples: values,
    median: median(values),
    p99: percentile(values, 99),
    min: n ? Math.min(...values) : Number.NaN,
    max: n ? Math.max(...values) : Number.NaN,
    mean: n ? values.reduce((a, b) => a + b, 0) / n : Number.NaN,
    n,
  }
}

const gc = typeof globalThis.gc === 'function' ? globalThis.gc : () => {}

async function runCase(fn, iterations) {
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < iterations; i++) await fn()
  return Number(process.hrtime.bigint() - t0) / iterations
}

export async function rounds(cases, options = {}) {
  const { rounds: n = 15, iterations = 20_000, warmup = 2, onRound } = options
  const names = Object.keys(cases)
  const samples = Object.fromEntries(names.map((k) => [k, []]))
  for (let r = 0; r < warmup + n; r++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(r + j) % names.length]
      gc()
      const ns = await runCase(cases[name], iterations)
      if (r >= warmup) samples[name].push(ns)
    }
    if (r >= warmup) onRound?.(r - warmup + 1, n)
  }
  return Object.fromEntries(names.map((k) => [k, summarize(samples[k])]))
}

export async function timeEach(fn, n, options = {}) {
  const { warmup = Math.min(100, n) } = options
  for (let i = 0; i < warmup; i++) await fn()
  const values = new Array(n)
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint()
    await fn()
    values[i] = Number(process.hrtime.bigint() - t0)
  }
  return summarize(values)
}

export function fmtNs(ns) {
  if (!Number.isFinite(ns)) return 'n/a'
  if (ns < 1_000) return `${ns.toFixed(0)} ns`
  if (ns < 1_000_000) return `${(ns / 1_000).toFixed(2)} µs`
  return `${(ns / 1_000_000).toFixed(2)} ms`
}

export function ratio(x, base) {
  return `${(x / base).toFixed(2)}x`
}

export function markdownTable(headers, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`
  return [line(headers), line(headers.map(() => '---')), ...rows.map((r) => line(r.map(String)))].join('\n')
}

export function writeJson(name, data) {
  mkdirSync(OUT_DIR, { recursive: true })
  const file = join(OUT_DIR, `${name}.json`)
  const meta = {
    node: process.version,
    platform: platform(),
    cpus: cpus().length,
    cpu: cpus()[0]?.model,
    date: new Date().toISOString(),
  }
  writeFileSync(file, `${JSON.stringify({ ...meta, ...data }, null, 2)}\n`)
  return file
}
