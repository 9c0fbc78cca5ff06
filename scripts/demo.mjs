#!/usr/bin/env node
// The demo: a real 3-node Patroni cluster (synchronous_mode) and Redis from the lab, the
// Express library example as a child process, and a steady mixed load of reads and writes
// over HTTP. On the way the PostgreSQL primary is killed (kill -9) and Redis is paused
// (SIGSTOP) and resumed. At the end: a report (latency per phase, errors by type,
// acknowledged writes against rows found, failover recovery, cache figures) in .demo/, and
// a timeline chart, .demo/timeline.svg (and .png when rsvg-convert is installed).
//
//   node scripts/demo.mjs            (npm run demo installs, builds, then runs this)
//
// Environment: DEMO_READERS (12), DEMO_WRITERS (4), DEMO_KILL_AT_S (15), DEMO_PAUSE_AT_S (55),
// DEMO_RESUME_AT_S (70), DEMO_END_S (85), APP_NODE_OPTIONS (node options for the app only).
// The lab is always torn down, also on failure.
import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const EXPRESS_EXAMPLE = join(ROOT, 'examples/express-library')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ------------------------------------------------------------------ lab and app

/** Imports the built lab (packages/lab/dist): `npm run build` first. */
export async function importLab() {
  try {
    return await import(pathToFileURL(join(ROOT, 'packages/lab/dist/index.js')).href)
  } catch (err) {
    throw new Error('packages/lab/dist is missing: run `npm run build` (or `npx tsc -b`) first', {
      cause: err,
    })
  }
}

/** Creates the catalog's tables and seeds 400 books on the current primary. */
export async function applySchema(lab, exampleDir = EXPRESS_EXAMPLE) {
  await lab.sql(readFileSync(join(exampleDir, 'schema.sql'), 'utf8'))
  await lab.sql(readFileSync(join(exampleDir, 'seed.sql'), 'utf8'))
}

/**
 * Starts an example's server (src/server.js) as a child process against the lab and
 * resolves once it listens and /ready answers 200.
 * @returns {Promise<{ url: string, child: import('node:child_process').ChildProcess, stop: () => Promise<number | null> }>}
 */
export async function startApp(
  lab,
  { exampleDir = EXPRESS_EXAMPLE, logFile, env = {}, readyTimeoutMs = 30_000 } = {},
) {
  const child = spawn(process.execPath, [join(exampleDir, 'src/server.js')], {
    cwd: exampleDir,
    env: {
      PATH: process.env.PATH ?? '',
      NODE_ENV: 'production',
      PORT: '0',
      HOST: '127.0.0.1',
      PATRONI_ENDPOINTS: lab.patroni.endpoints.join(','),
      PGUSER: lab.postgres.user,
      PGPASSWORD: lab.postgres.password,
      PGDATABASE: lab.postgres.database,
      REDIS_HOST: lab.redis.host,
      REDIS_PORT: String(lab.redis.port),
      EXPOSE_DEBUG: '1',
      // The admin listener (verbose probes, /metrics) on a free port: several apps may run at once.
      ADMIN_PORT: '0',
      // APP_NODE_OPTIONS: node options for the app only (e.g. --trace-warnings).
      ...(process.env.APP_NODE_OPTIONS ? { NODE_OPTIONS: process.env.APP_NODE_OPTIONS } : {}),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const log = []
  const append = (chunk) => {
    log.push(chunk)
    if (logFile) writeFileSync(logFile, Buffer.concat(log))
  }
  child.stderr.on('data', append)
  const url = await new Promise((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(
      () => reject(new Error(`the app did not listen within ${readyTimeoutMs} ms`)),
      readyTimeoutMs,
    )
    child.stdout.on('data', (chunk) => {
      append(chunk)
      buffered += chunk.toString()
      const match = /listening on (http:\/\/[^\s,]+)/.exec(buffered)
      if (match) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(
        new Error(
          `the app exited (${code ?? signal}) before listening:\n${Buffer.concat(log).toString().slice(-2000)}`,
        ),
      )
    })
  })
  const exited = once(child, 'exit')
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
    const [code] = await exited
    clearTimeout(timer)
    return code
  }
  const deadline = Date.now() + readyTimeoutMs
  for (;;) {
    const res = await request(url, 'GET', '/ready', { timeoutMs: 2000 }).catch(() => undefined)
    if (res?.status === 200) break
    if (Date.now() > deadline) {
      await stop()
      throw new Error(
        `the app was not ready within ${readyTimeoutMs} ms (last: ${res?.status} ${res?.text ?? ''})`,
      )
    }
    await sleep(200)
  }
  return { url, child, stop }
}

// ------------------------------------------------------------------ HTTP

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })

/**
 * One HTTP request with a hard deadline. Resolves with { status, headers, text, json } or
 * rejects with an error whose `code` says what happened (ECONNREFUSED, ETIMEDOUT, ...).
 */
export function request(base, method, path, { body, headers = {}, timeoutMs = 40_000 } = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const req = http.request(
      new URL(path, base),
      {
        method,
        agent,
        headers: {
          ...headers,
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
        },
      },
      (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => {
          clearTimeout(timer)
          const text = Buffer.concat(chunks).toString()
          let json
          try {
            json = text ? JSON.parse(text) : undefined
          } catch {}
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json })
        })
        res.on('error', reject)
      },
    )
    const timer = setTimeout(
      () => req.destroy(Object.assign(new Error('client timeout'), { code: 'ETIMEDOUT' })),
      timeoutMs,
    )
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    req.end(payload)
  })
}

// ------------------------------------------------------------------ load

/**
 * A steady mixed load with bounded concurrency: `readers` loops of GET /books/:id (80%) and
 * GET /books?author= (20%); `writers` loops of lend (POST /loans), read it back with the
 * read-your-writes token (GET /loans/:id), give it back (POST /loans/:id/return).
 * Every finished request lands in `results` as { t, ms, kind, ok, type }.
 */
export function createLoad({ url, readers = 12, writers = 4, authors, bookCount = 400 }) {
  const started = performance.now()
  const now = () => performance.now() - started
  const results = []
  /** loan id -> { ackedAt, returnedAckAt? }; loans whose lend failed: id -> last error type */
  const acked = new Map()
  const failedLends = new Map()
  const ryw = { checks: 0, violations: 0 }
  let running = true

  const record = (kind, t0, res, err) => {
    const t = now()
    let ok = false
    let type
    if (res) {
      ok = res.status < 400 || (res.status === 409 && res.json?.error === 'NOT_AVAILABLE')
      if (!ok) type = `${res.status} ${res.json?.error ?? 'no body'}`
    } else {
      type = `network ${err?.code ?? err?.message ?? 'error'}`
    }
    results.push({ t, ms: t - t0, kind, ok, type })
    return ok
  }

  const call = async (kind, method, path, opts) => {
    const t0 = now()
    try {
      const res = await request(url, method, path, opts)
      record(kind, t0, res)
      return res
    } catch (err) {
      record(kind, t0, undefined, err)
      return undefined
    }
  }

  const reader = async () => {
    while (running) {
      if (Math.random() < 0.8) {
        await call('read', 'GET', `/books/${1 + Math.floor(Math.random() * bookCount)}`)
      } else {
        const author = authors[Math.floor(Math.random() * authors.length)]
        await call('read', 'GET', `/books?author=${encodeURIComponent(author)}`)
      }
    }
  }

  const writer = async (n) => {
    while (running) {
      const id = randomUUID()
      const bookId = 1 + Math.floor(Math.random() * bookCount)
      // Lend; after an unknown outcome retry with the same id (the app makes that safe).
      let lent
      for (let attempt = 0; attempt < 3 && running; attempt++) {
        const res = await call('write', 'POST', '/loans', { body: { id, bookId, member: `demo-${n}` } })
        if (res && (res.status === 201 || res.status === 200)) {
          lent = res
          break
        }
        if (res?.status === 409) break
        failedLends.set(id, res ? `${res.status} ${res.json?.error}` : 'network')
        await sleep(100)
      }
      if (!lent) continue
      failedLends.delete(id)
      const entry = { ackedAt: now(), returnedAckAt: undefined }
      acked.set(id, entry)
      const token = lent.headers['x-ryw-token']
      // Read your own write: with the token, the loan must be visible, whichever member answers.
      const seen = await call('ryw', 'GET', `/loans/${id}`, {
        headers: token ? { 'x-ryw-token': token } : {},
      })
      if (seen && seen.status !== 503) {
        ryw.checks++
        if (seen.status !== 200) ryw.violations++
      }
      for (let attempt = 0; attempt < 3; attempt++) {
        const res = await call('write', 'POST', `/loans/${id}/return`, {
          headers: token ? { 'x-ryw-token': token } : {},
        })
        if (res && res.status === 200) {
          entry.returnedAckAt = now()
          break
        }
        await sleep(100)
      }
    }
  }

  const loops = [
    ...Array.from({ length: readers }, () => reader()),
    ...Array.from({ length: writers }, (_, i) => writer(i)),
  ]
  return {
    now,
    results,
    acked,
    failedLends,
    ryw,
    /** Stops starting new requests and waits for those in flight. */
    async stop() {
      running = false
      await Promise.all(loops)
    },
  }
}

// ------------------------------------------------------------------ statistics

export function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

/** Per-second buckets: ok, errors, writes ok, p99 of everything that finished in that second. */
export function perSecond(results, seconds) {
  const buckets = Array.from({ length: seconds }, (_, s) => ({ t: s, ok: 0, errors: 0, writes: 0, lat: [] }))
  for (const r of results) {
    const b = buckets[Math.floor(r.t / 1000)]
    if (!b) continue
    if (r.ok) b.ok++
    else b.errors++
    if (r.ok && r.kind === 'write') b.writes++
    b.lat.push(r.ms)
  }
  return buckets.map(({ lat, ...b }) => ({
    ...b,
    p99: percentile(
      lat.sort((x, y) => x - y),
      99,
    ),
  }))
}

/**
 * Latency and errors of the requests that started within [from, to) ms: a write that was
 * held through a failover counts in the phase it was sent in, with its whole wait.
 */
export function summarize(results, from, to) {
  const inside = results.filter((r) => r.t - r.ms >= from && r.t - r.ms < to)
  const lat = inside.map((r) => r.ms).sort((a, b) => a - b)
  const wlat = inside
    .filter((r) => r.kind === 'write')
    .map((r) => r.ms)
    .sort((a, b) => a - b)
  const errors = {}
  for (const r of inside) if (!r.ok) errors[r.type] = (errors[r.type] ?? 0) + 1
  return {
    requests: inside.length,
    ok: inside.filter((r) => r.ok).length,
    errors,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    writes: wlat.length,
    writeP50: percentile(wlat, 50),
    writeP99: percentile(wlat, 99),
    writeMax: wlat.length > 0 ? wlat[wlat.length - 1] : Number.NaN,
    rps: inside.length / Math.max(0.001, (to - from) / 1000),
  }
}

const fmtMs = (ms) => (Number.isFinite(ms) ? (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)) : '-')

// ------------------------------------------------------------------ chart

const esc = (s) =>
  String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])

/**
 * A timeline chart, hand-written SVG: successful requests per second (line), errors per
 * second (red bars), acknowledged writes per second (line, right axis) in the top panel;
 * p99 latency per second (log scale) in the bottom panel; each fault a labelled vertical line.
 * `rightAxis` picks the right axis' series (bench/load plots concurrent users there).
 */
export function renderTimeline({
  buckets,
  events,
  title,
  phases = [],
  notReady = [],
  rightAxis = { key: 'writes', label: 'acknowledged writes/s' },
}) {
  const W = 1100
  const left = 70
  const right = 70
  const top = 50
  const h1 = 260
  const gap = 60
  const h2 = 150
  const H = top + h1 + gap + h2 + 60
  const seconds = Math.max(1, buckets.length)
  const x = (t) => left + (t / seconds) * (W - left - right)
  const maxRps = niceCeil(Math.max(1, ...buckets.map((b) => b.ok + b.errors)))
  const maxW = niceCeil(Math.max(1, ...buckets.map((b) => b[rightAxis.key] ?? 0)))
  const y1 = (v) => top + h1 - (v / maxRps) * h1
  const yw = (v) => top + h1 - (v / maxW) * h1
  const lats = buckets.map((b) => b.p99).filter((v) => Number.isFinite(v) && v > 0)
  const lmin = 0.1
  const lmax = Math.max(10, ...lats)
  const top2 = top + h1 + gap
  const y2 = (v) => top2 + h2 - (Math.log10(Math.max(v, lmin) / lmin) / Math.log10(lmax / lmin)) * h2
  const out = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`,
  )
  out.push(`<title>${esc(title)}</title>`)
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`)
  out.push(`<text x="${left}" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`)
  // Phase shading.
  phases.forEach((p, i) => {
    if (i % 2 === 1) {
      out.push(
        `<rect x="${x(p.from / 1000).toFixed(1)}" y="${top}" width="${(x(p.to / 1000) - x(p.from / 1000)).toFixed(1)}" height="${h1 + gap + h2}" fill="#f3f3f7"/>`,
      )
    }
  })
  // Spans in which GET /ready answered 503: a band under the top panel.
  for (const span of notReady) {
    const x0 = x(span.fromS)
    const x1 = Math.max(x0 + 3, x(span.toS + 1))
    out.push(
      `<rect x="${x0.toFixed(1)}" y="${top + h1 + 4}" width="${(x1 - x0).toFixed(1)}" height="8" fill="#ff7f0e"/>`,
    )
  }
  if (notReady.length > 0) {
    out.push(
      `<text x="${left}" y="${top + h1 + 26}" fill="#ff7f0e" font-size="11">orange band: /ready answered 503</text>`,
    )
  }
  // Axes and grid, top panel.
  for (let i = 0; i <= 4; i++) {
    const v = (maxRps / 4) * i
    out.push(`<line x1="${left}" x2="${W - right}" y1="${y1(v)}" y2="${y1(v)}" stroke="#e0e0e0"/>`)
    out.push(`<text x="${left - 6}" y="${y1(v) + 4}" text-anchor="end">${Math.round(v)}</text>`)
    const w = (maxW / 4) * i
    out.push(`<text x="${W - right + 6}" y="${yw(w) + 4}" fill="#1f6fb2">${Math.round(w)}</text>`)
  }
  out.push(
    `<text x="16" y="${top + h1 / 2}" transform="rotate(-90 16 ${top + h1 / 2})" text-anchor="middle">requests / s</text>`,
  )
  out.push(
    `<text x="${W - 14}" y="${top + h1 / 2}" transform="rotate(90 ${W - 14} ${top + h1 / 2})" text-anchor="middle" fill="#1f6fb2">${esc(rightAxis.label)}</text>`,
  )
  // Error bars.
  const bw = Math.max(1, (W - left - right) / seconds - 1)
  for (const b of buckets) {
    if (b.errors > 0) {
      // At least 3 px high, with the count on top: a handful of errors stays visible.
      const yTop = Math.min(y1(b.errors), top + h1 - 3)
      out.push(
        `<rect x="${x(b.t).toFixed(1)}" y="${yTop.toFixed(1)}" width="${bw.toFixed(1)}" height="${(top + h1 - yTop).toFixed(1)}" fill="#d62728" opacity="0.85"/>`,
      )
      out.push(
        `<text x="${(x(b.t) + bw / 2).toFixed(1)}" y="${(yTop - 3).toFixed(1)}" text-anchor="middle" fill="#d62728" font-size="10">${b.errors}</text>`,
      )
    }
  }
  const line = (pts, color, width = 2) =>
    `<polyline fill="none" stroke="${color}" stroke-width="${width}" points="${pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')}"/>`
  out.push(
    line(
      buckets.map((b) => [x(b.t + 0.5), y1(b.ok)]),
      '#2ca02c',
    ),
  )
  out.push(
    line(
      buckets.map((b) => [x(b.t + 0.5), yw(b[rightAxis.key] ?? 0)]),
      '#1f6fb2',
      1.5,
    ),
  )
  out.push(`<line x1="${left}" x2="${W - right}" y1="${top + h1}" y2="${top + h1}" stroke="#333"/>`)
  // Bottom panel: p99 latency, log scale.
  for (const v of [0.1, 1, 10, 100, 1000, 10000, 100000]) {
    if (v > lmax * 1.01) break
    out.push(`<line x1="${left}" x2="${W - right}" y1="${y2(v)}" y2="${y2(v)}" stroke="#e0e0e0"/>`)
    out.push(
      `<text x="${left - 6}" y="${y2(v) + 4}" text-anchor="end">${v >= 1000 ? `${v / 1000} s` : `${v} ms`}</text>`,
    )
  }
  out.push(
    `<text x="16" y="${top2 + h2 / 2}" transform="rotate(-90 16 ${top2 + h2 / 2})" text-anchor="middle">p99 latency</text>`,
  )
  out.push(
    line(
      buckets.filter((b) => Number.isFinite(b.p99)).map((b) => [x(b.t + 0.5), y2(b.p99)]),
      '#9467bd',
    ),
  )
  out.push(`<line x1="${left}" x2="${W - right}" y1="${top2 + h2}" y2="${top2 + h2}" stroke="#333"/>`)
  // Time axis.
  const step = seconds > 300 ? 60 : seconds > 120 ? 20 : 10
  for (let t = 0; t <= seconds; t += step) {
    out.push(`<text x="${x(t)}" y="${top2 + h2 + 18}" text-anchor="middle">${t} s</text>`)
    out.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${top2 + h2}" y2="${top2 + h2 + 5}" stroke="#333"/>`)
  }
  // Events: vertical lines with labels, staggered so that close ones stay readable.
  events.forEach((e, i) => {
    const ex = x(e.t / 1000)
    const color = e.color ?? '#444'
    out.push(
      `<line x1="${ex.toFixed(1)}" x2="${ex.toFixed(1)}" y1="${top - 4}" y2="${top2 + h2}" stroke="${color}" stroke-width="1.5" stroke-dasharray="5,3"/>`,
    )
    const ly = top + 14 + (i % 3) * 15
    out.push(
      `<text x="${(ex + 4).toFixed(1)}" y="${ly}" fill="${color}" font-weight="bold">${esc(e.label)}</text>`,
    )
  })
  // Legend.
  const ly = H - 16
  const legend = [
    ['#2ca02c', 'successful requests/s'],
    ['#d62728', 'errors/s'],
    ['#1f6fb2', `${rightAxis.label} (right axis)`],
    ['#9467bd', 'p99 latency (log)'],
  ]
  let lx = left
  for (const [color, label] of legend) {
    out.push(`<rect x="${lx}" y="${ly - 10}" width="14" height="10" fill="${color}"/>`)
    out.push(`<text x="${lx + 18}" y="${ly}">${esc(label)}</text>`)
    lx += 30 + label.length * 7
  }
  out.push('</svg>')
  return `${out.join('\n')}\n`
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p
  return 10 * p
}

/** Converts an SVG to PNG when rsvg-convert is installed; returns the PNG path or undefined. */
export function svgToPng(svgPath) {
  const png = svgPath.replace(/\.svg$/, '.png')
  const r = spawnSync('rsvg-convert', ['-o', png, svgPath], { stdio: 'ignore' })
  return r.status === 0 ? png : undefined
}

// ------------------------------------------------------------------ failover watch

/** Polls /cluster every 20 ms until a running leader other than `old` shows up. */
export async function watchForNewLeader(
  lab,
  old,
  { timeoutMs = 60_000, now = () => performance.now() } = {},
) {
  const deadline = performance.now() + timeoutMs
  while (performance.now() < deadline) {
    const cluster = await lab.cluster().catch(() => undefined)
    const leader = cluster?.members.find((m) => m.role === 'leader' && m.state === 'running')
    if (leader && leader.name !== old) return { name: leader.name, at: now() }
    await sleep(20)
  }
  return undefined
}

/** Readiness samples -> how many answered 200 / 503, and the spans of 503. */
function readinessSummary(samples) {
  const sorted = [...samples].sort((a, b) => a.t - b.t)
  const spans = []
  let open
  for (const s of sorted) {
    if (s.status !== 200 && !open) open = { fromS: +(s.t / 1000).toFixed(1), toS: +(s.t / 1000).toFixed(1) }
    else if (s.status !== 200 && open) open.toS = +(s.t / 1000).toFixed(1)
    else if (s.status === 200 && open) {
      spans.push(open)
      open = undefined
    }
  }
  if (open) spans.push(open)
  return {
    samples: sorted.length,
    ready: sorted.filter((s) => s.status === 200).length,
    warn: sorted.filter((s) => s.status === 200 && s.body === 'warn').length,
    notReady: sorted.filter((s) => s.status !== 200).length,
    notReadySpans: spans,
  }
}

async function debugStats(url) {
  const res = await request(url, 'GET', '/debug/stats', { timeoutMs: 5000 }).catch(() => undefined)
  return res?.status === 200 ? res.json : undefined
}

function cacheDelta(a, b) {
  if (!a?.cache || !b?.cache) return undefined
  const d = {}
  for (const k of Object.keys(b.cache)) {
    if (typeof b.cache[k] === 'number') d[k] = b.cache[k] - (typeof a.cache[k] === 'number' ? a.cache[k] : 0)
  }
  return d
}

// ------------------------------------------------------------------ the demo

async function main() {
  const envInt = (name, dflt) => {
    const v = process.env[name]
    const n = v === undefined || v === '' ? dflt : Number(v)
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`)
    return n
  }
  const readers = envInt('DEMO_READERS', 12)
  const writers = envInt('DEMO_WRITERS', 4)
  const killAtS = envInt('DEMO_KILL_AT_S', 15)
  const pauseAtS = envInt('DEMO_PAUSE_AT_S', 55)
  const resumeAtS = envInt('DEMO_RESUME_AT_S', 70)
  const endS = envInt('DEMO_END_S', 85)
  const outDir = join(ROOT, '.demo')
  mkdirSync(outDir, { recursive: true })
  const t0 = performance.now()
  const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`

  const { startLab } = await importLab()
  console.log('starting the lab: 3 Patroni members (synchronous_mode), etcd, Redis ...')
  const lab = await startLab({ nodes: 3, synchronousMode: true, redis: true })
  let app
  let load
  const stopAll = async () => {
    if (load) await Promise.race([load.stop(), sleep(45_000)])
    if (app) await app.stop().catch(() => {})
    await lab.down().catch((err) => console.error('lab teardown:', err.message))
  }
  const onSignal = (sig) => {
    console.log(`\n${sig}: tearing down`)
    app?.child.kill('SIGKILL')
    lab.down().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    console.log(`lab up in ${lab.bootSeconds ?? '?'} s (${elapsed()}); applying schema and seed`)
    await lab.waitForReplicas(2)
    await applySchema(lab)
    const authors = (await lab.sql('SELECT DISTINCT author FROM books ORDER BY 1')).map((r) => r[0])
    app = await startApp(lab, { logFile: join(outDir, 'app.log'), env: { DRAIN_DELAY_MS: '1000' } })
    console.log(
      `express example ready at ${app.url} (${elapsed()}); load: ${readers} readers + ${writers} writers`,
    )

    const stats0 = await debugStats(app.url)
    load = createLoad({ url: app.url, readers, writers, authors })
    const events = []
    // The app's cache counters, once a second, to split them by phase afterwards.
    const samples = [{ t: 0, stats: stats0 }]
    // And what the readiness probe answers, as Kubernetes would see it (every second).
    const readiness = []
    const sampler = setInterval(() => {
      const t = load.now()
      debugStats(app.url).then((stats) => stats && samples.push({ t, stats }))
      request(app.url, 'GET', '/ready', { timeoutMs: 1000 }).then(
        (res) => readiness.push({ t, status: res.status, body: res.json?.status }),
        () => readiness.push({ t, status: 0 }),
      )
    }, 1000)
    let phase = 'baseline'
    let oldLeader
    let leaderSeen
    let killedAt
    let pausedAt
    let resumedAt

    // One progress line a second.
    let printed = 0
    const progress = setInterval(() => {
      const s = Math.floor(load.now() / 1000)
      if (s <= printed) return
      const b = perSecond(load.results, s)[s - 1]
      printed = s
      if (!b) return
      console.log(
        `t=${String(s).padStart(3)}s  rps=${String(b.ok + b.errors).padStart(5)}  errors=${String(b.errors).padStart(4)}  writes=${String(b.writes).padStart(4)}  p99=${fmtMs(b.p99).padStart(6)} ms  ${phase}`,
      )
    }, 250)

    const at = async (s) => {
      const wait = s * 1000 - load.now()
      if (wait > 0) await sleep(wait)
    }
    try {
      await at(killAtS)
      const before = await lab.primary()
      // In synchronous mode, kill only once a sync standby has settled (a Patroni 3 cluster
      // killed right after the sync role moved can stall); the clock starts at the kill itself.
      await lab.waitForSyncStandby({ maxLagBytes: 1_048_576 })
      killedAt = load.now()
      oldLeader = await lab.killPrimary({ waitForSync: false })
      phase = `primary ${oldLeader} killed`
      events.push({ t: killedAt, label: `kill -9 primary (${oldLeader})`, color: '#d62728' })
      console.log(`-- kill -9 of the primary ${oldLeader} (timeline ${before?.timeline ?? '?'})`)
      leaderSeen = await watchForNewLeader(lab, oldLeader, { now: load.now })
      if (leaderSeen) {
        phase = `new leader ${leaderSeen.name}`
        events.push({
          t: leaderSeen.at,
          label: `new leader ${leaderSeen.name} in /cluster`,
          color: '#ff7f0e',
        })
        console.log(
          `-- ${leaderSeen.name} is the leader in /cluster, ${((leaderSeen.at - killedAt) / 1000).toFixed(1)} s after the kill`,
        )
      }
      await at(pauseAtS)
      pausedAt = load.now()
      await lab.pauseRedis()
      phase = 'redis paused'
      events.push({ t: pausedAt, label: 'Redis paused (SIGSTOP)', color: '#8c564b' })
      console.log('-- Redis paused (SIGSTOP)')
      await at(resumeAtS)
      resumedAt = load.now()
      await lab.resumeRedis()
      phase = 'redis resumed'
      events.push({ t: resumedAt, label: 'Redis resumed (SIGCONT)', color: '#17becf' })
      console.log('-- Redis resumed (SIGCONT)')
      await at(endS)
    } finally {
      clearInterval(progress)
      clearInterval(sampler)
    }
    const endedAt = load.now()
    await load.stop()
    const drainedAt = load.now()
    samples.push({ t: drainedAt, stats: await debugStats(app.url) })
    samples.sort((a, b) => a.t - b.t)
    /** The last sample taken at or before t (the first one if none). */
    const sampleAt = (t) => [...samples].reverse().find((x) => x.t <= t && x.stats) ?? samples[0]

    // Acknowledged writes against what the database holds, read on the (new) primary.
    const rows = await lab.sql('SELECT id::text, returned_at IS NOT NULL FROM loans')
    const inDb = new Map(rows.map((r) => [r[0], r[1] === 't']))
    let lostLoans = 0
    let lostReturns = 0
    let acknowledgedReturns = 0
    for (const [id, entry] of load.acked) {
      if (!inDb.has(id)) lostLoans++
      if (entry.returnedAckAt !== undefined) {
        acknowledgedReturns++
        if (inDb.get(id) !== true) lostReturns++
      }
    }
    let committedDespiteError = 0
    for (const id of load.failedLends.keys()) if (inDb.has(id)) committedDespiteError++

    // Recovery: the first write acknowledged after the kill that the dead primary cannot have
    // acknowledged (sent after the kill, or answered after the new leader showed up).
    const firstWrite = load.results.find(
      (r) =>
        r.kind === 'write' &&
        r.ok &&
        r.t > (killedAt ?? Number.POSITIVE_INFINITY) &&
        (r.t - r.ms > killedAt || (leaderSeen && r.t >= leaderSeen.at)),
    )
    if (firstWrite) events.push({ t: firstWrite.t, label: 'first write acknowledged', color: '#2ca02c' })
    events.sort((a, b) => a.t - b.t)

    const recovery = {
      oldLeader,
      newLeader: leaderSeen?.name,
      killToNewLeaderMs: leaderSeen && killedAt !== undefined ? leaderSeen.at - killedAt : undefined,
      killToFirstWriteMs: firstWrite && killedAt !== undefined ? firstWrite.t - killedAt : undefined,
      newLeaderToFirstWriteMs: firstWrite && leaderSeen ? firstWrite.t - leaderSeen.at : undefined,
    }
    const failoverEnd = firstWrite?.t ?? leaderSeen?.at ?? killedAt
    const phases = [
      { name: 'baseline', from: 0, to: killedAt },
      { name: 'primary killed -> first write', from: killedAt, to: failoverEnd },
      { name: 'after failover', from: failoverEnd, to: pausedAt },
      { name: 'Redis paused', from: pausedAt, to: resumedAt },
      { name: 'Redis resumed', from: resumedAt, to: drainedAt + 1 },
    ].filter((p) => p.from !== undefined && p.to !== undefined && p.to > p.from)

    const buckets = perSecond(load.results, Math.floor(endedAt / 1000))
    const total = summarize(load.results, 0, Number.POSITIVE_INFINITY)
    const report = {
      date: new Date().toISOString(),
      lab: { nodes: 3, synchronousMode: true, bootSeconds: lab.bootSeconds },
      load: { readers, writers, seconds: Math.round(endedAt / 1000) },
      total,
      phases: phases.map((p) => ({
        name: p.name,
        fromS: +(p.from / 1000).toFixed(2),
        toS: +(p.to / 1000).toFixed(2),
        ...summarize(load.results, p.from, p.to),
        cache: cacheDelta(sampleAt(p.from).stats, sampleAt(p.to).stats),
      })),
      writes: {
        loansAcknowledged: load.acked.size,
        loansFound: [...load.acked.keys()].filter((id) => inDb.has(id)).length,
        loansLost: lostLoans,
        returnsAcknowledged: acknowledgedReturns,
        returnsLost: lostReturns,
        lendsFailedButCommitted: committedDespiteError,
        lendsFailed: load.failedLends.size,
      },
      readYourWrites: load.ryw,
      recovery,
      cache: {
        wholeRun: cacheDelta(samples[0].stats, samples[samples.length - 1].stats),
        end: samples[samples.length - 1].stats?.cache,
      },
      router: samples[samples.length - 1].stats?.router,
      readiness: readinessSummary(readiness),
      events: events.map((e) => ({ t: +(e.t / 1000).toFixed(2), label: e.label })),
    }
    const title = `resilient demo: Express library, 3-node Patroni (sync), ${readers}+${writers} clients`
    const svg = renderTimeline({ buckets, events, title, phases, notReady: report.readiness.notReadySpans })
    writeFileSync(join(outDir, 'timeline.svg'), svg)
    const png = svgToPng(join(outDir, 'timeline.svg'))
    writeFileSync(join(outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`)
    const md = renderReport(report, { png })
    writeFileSync(join(outDir, 'report.md'), md)
    console.log(`\n${md}`)
    console.log(
      `timeline: ${join(outDir, 'timeline.svg')}${png ? ` and ${png}` : ''}; report: .demo/report.md, .demo/report.json`,
    )
    const failed = lostLoans + lostReturns + load.ryw.violations > 0
    if (failed) process.exitCode = 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    console.log('tearing the lab down ...')
    await stopAll()
    console.log(`done in ${elapsed()}`)
  }
}

export function renderReport(report, { png } = {}) {
  const lines = []
  const s = (ms) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(2)} s`)
  lines.push(`## Demo report (${report.date})`)
  lines.push('')
  lines.push(
    `${report.total.requests} requests in ${report.load.seconds} s (${report.load.readers} readers + ${report.load.writers} writers over HTTP), ` +
      `${report.total.requests - report.total.ok} errors.`,
  )
  lines.push('')
  lines.push(
    '| phase (by send time) | from | to | requests | req/s | errors | p50 ms | p99 ms | writes | write p50 ms | write p99 ms | write max ms | cache hit ratio | stale serves |',
  )
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const p of report.phases) {
    const errors = Object.values(p.errors).reduce((a, b) => a + b, 0)
    const c = p.cache
    const hr = c && c.hits + c.misses > 0 ? `${((100 * c.hits) / (c.hits + c.misses)).toFixed(1)} %` : '-'
    lines.push(
      `| ${p.name} | ${p.fromS} s | ${p.toS} s | ${p.requests} | ${p.rps.toFixed(0)} | ${errors} | ${fmtMs(p.p50)} | ${fmtMs(p.p99)} | ${p.writes} | ${fmtMs(p.writeP50)} | ${fmtMs(p.writeP99)} | ${fmtMs(p.writeMax)} | ${hr} | ${c?.stale ?? '-'} |`,
    )
  }
  lines.push('')
  lines.push(
    'Requests count in the phase they were sent in: a write held through the failover counts there, with its whole wait. ' +
      "Cache figures are deltas of the app's `cache.stats()`, sampled once a second from /debug/stats.",
  )
  lines.push('')
  lines.push('Errors by type:')
  lines.push('')
  const byType = {}
  for (const p of report.phases) for (const [k, v] of Object.entries(p.errors)) byType[`${k} (${p.name})`] = v
  if (Object.keys(byType).length === 0) lines.push('- none')
  for (const [k, v] of Object.entries(byType)) lines.push(`- ${k}: ${v}`)
  lines.push('')
  const w = report.writes
  lines.push(
    `Writes: ${w.loansAcknowledged} loans acknowledged, ${w.loansFound} found in the database afterwards, **${w.loansLost} lost**; ` +
      `${w.returnsAcknowledged} returns acknowledged, **${w.returnsLost} lost**. ` +
      `${w.lendsFailed} lends failed for good; ${w.lendsFailedButCommitted} of them were committed anyway (an error during a failover means "outcome unknown").`,
  )
  lines.push(
    `Read-your-writes: ${report.readYourWrites.checks} reads with the token, ${report.readYourWrites.violations} did not see their own write.`,
  )
  const r = report.recovery
  lines.push('')
  lines.push(
    `Failover: primary ${r.oldLeader} killed; new leader ${r.newLeader ?? '?'} visible in /cluster after ${s(r.killToNewLeaderMs)}; ` +
      `first acknowledged write ${s(r.killToFirstWriteMs)} after the kill, ${s(r.newLeaderToFirstWriteMs)} after the new leader was visible.`,
  )
  const rd = report.readiness
  if (rd) {
    lines.push(
      `Readiness (GET /ready once a second): ${rd.ready} of ${rd.samples} answers 200 (${rd.warn} of them 'warn'), ${rd.notReady} answered 503` +
        (rd.notReadySpans.length
          ? ` (${rd.notReadySpans.map((x) => `${x.fromS} to ${x.toS} s`).join(', ')})`
          : '') +
        '.',
    )
  }
  const c = report.cache.wholeRun
  if (c) {
    const hr = c.hits + c.misses > 0 ? ((100 * c.hits) / (c.hits + c.misses)).toFixed(1) : '-'
    lines.push(`Cache over the run: ${JSON.stringify(c)}; hit ratio ${hr} %.`)
  }
  lines.push('')
  lines.push(`Timeline: .demo/timeline.svg${png ? ' (.demo/timeline.png)' : ''}`)
  return `${lines.join('\n')}\n`
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
