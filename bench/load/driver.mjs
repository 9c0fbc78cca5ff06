// The load generator of bench/load: autocannon in a process of its own (so that its CPU is
// not the service's), started by load.mjs with a plan over IPC:
//   { url, groups: [{ users, startS, stopS }], thinkMs, timeoutS, bookCount, authors }
// Each group is one autocannon instance whose connections are users: each user keeps its
// connection (keep-alive) and thinks between requests, a random 0.5x to 1.5x `thinkMs` after
// each response (the guide's users do the same). Each user cycles through the demo's
// L1-hit-heavy mix: 13 GET /books/:id and 3 GET /books?author= (cached), then a loan: POST
// /loans, GET /loans/:id with the read-your-writes token, POST /loans/:id/return.
// Every second it sends the parent { t, ok, errors: { type: n }, lat: [ms * 10, ...], users,
// byKind: { read | ryw | write: [ms * 10, ...] } } (read: the 16 cached reads; ryw: the read of
// one's own loan with the token; write: the loan and its return; after a refused loan the
// last two are book reads but keep their kind).
import { randomUUID } from 'node:crypto'
import autocannon from 'autocannon'

const SEND_EVERY_MS = 1000

/** The request sequence of one user (autocannon `requests`; `context` is per connection). */
export function userRequests({ bookCount, authors }) {
  const book = () => `/books/${1 + Math.floor(Math.random() * bookCount)}`
  const author = () =>
    `/books?author=${encodeURIComponent(authors[Math.floor(Math.random() * authors.length)])}`
  const read = (path) => ({
    kind: 'read',
    method: 'GET',
    setupRequest: (req) => ({ ...req, method: 'GET', path: path() }),
  })
  const reads = [
    ...Array.from({ length: 13 }, () => read(book)),
    ...Array.from({ length: 3 }, () => read(author)),
  ]
  const lend = {
    kind: 'write',
    method: 'POST',
    setupRequest: (req, context) => {
      context.loan = randomUUID()
      context.lent = false
      return {
        ...req,
        method: 'POST',
        path: '/loans',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          id: context.loan,
          bookId: 1 + Math.floor(Math.random() * bookCount),
          member: 'load',
        }),
      }
    },
    onResponse: (status, _body, context, headers) => {
      context.lent = status === 201 || status === 200
      context.token = headers['x-ryw-token']
    },
  }
  // After a failed or refused lend, the user reads a book instead of its loan.
  const afterLend = (kind, path) => ({
    kind,
    method: 'GET',
    setupRequest: (req, context) =>
      context.lent
        ? {
            ...req,
            ...path(context),
            headers: context.token ? { 'x-ryw-token': context.token } : {},
            body: undefined,
          }
        : { ...req, method: 'GET', path: book(), headers: {}, body: undefined },
  })
  const rywRead = afterLend('ryw', (c) => ({ method: 'GET', path: `/loans/${c.loan}` }))
  const giveBack = afterLend('write', (c) => ({ method: 'POST', path: `/loans/${c.loan}/return` }))
  return [...reads, lend, rywRead, giveBack]
}

/** ok, or the error type: the SDK's code from a 5xx body, the status otherwise. */
export function classify(status, body) {
  if (status < 400) return undefined
  // 409 NOT_AVAILABLE: every copy is on loan, a business answer (the demo counts it as ok).
  if (status === 409 && body.includes('NOT_AVAILABLE')) return undefined
  let code
  try {
    code = JSON.parse(body).error
  } catch {}
  return `${status} ${code ?? 'no body'}`
}

/**
 * Gives every client of an autocannon instance a think time: `_doRequest` (autocannon 8's
 * per-connection "send the next request") runs after a random 0.5x-1.5x `thinkMs` pause.
 * autocannon's own rate limit cannot go below one request per second per connection.
 */
function thinking(thinkMs, timers) {
  return (client) => {
    const send = client._doRequest
    if (typeof send !== 'function')
      throw new Error('autocannon changed: Client#_doRequest is gone (pinned to 8.0)')
    client._doRequest = (...args) => {
      const delay = thinkMs * (0.5 + Math.random())
      const timer = setTimeout(() => {
        timers.delete(timer)
        if (!client.destroyed) send.apply(client, args)
      }, delay)
      timers.add(timer)
    }
  }
}

function run(plan) {
  const started = Date.now()
  const empty = () => ({ ok: 0, errors: {}, lat: [], byKind: { read: [], ryw: [], write: [] } })
  let bucket = empty()
  // autocannon calls a request's onResponse, then emits 'response' for it, in one tick: the
  // kind noted by the first is the kind of the latency the second reports.
  let lastKind = 'read'
  let users = 0
  const timers = new Set()
  const instances = []
  const requests = userRequests(plan)
  const fail = (type) => {
    bucket.errors[type] = (bucket.errors[type] ?? 0) + 1
  }
  const wrap = (r) =>
    // Classify every response (onResponse is also where the lend keeps its loan id).
    ({
      ...r,
      onResponse: (status, body, context, headers) => {
        r.onResponse?.(status, body, context, headers)
        lastKind = r.kind
        const type = classify(status, body)
        if (type === undefined) bucket.ok++
        else fail(type)
      },
    })
  // Every user of a group starts at the same point of the cycle: each group starts at another
  // (so that a short run sees loans too, and the loans do not come in waves).
  const rotated = (i) => {
    const k = (i * 7) % requests.length
    return [...requests.slice(k), ...requests.slice(0, k)]
  }
  const startGroup = (g, i) => {
    const instance = autocannon({
      url: plan.url,
      connections: g.users,
      duration: Math.max(1, g.stopS - g.startS),
      timeout: plan.timeoutS,
      requests: rotated(i).map(wrap),
      setupClient: thinking(plan.thinkMs, timers),
    })
    users += g.users
    instance.on('response', (_client, _status, _bytes, ms) => {
      const v = Math.round(ms * 10)
      bucket.lat.push(v)
      bucket.byKind[lastKind].push(v)
    })
    instance.on('timeout', () => fail('timeout'))
    instance.on('reqError', (err) => fail(`network ${err.code ?? err.message}`))
    instance.on('done', () => {
      users -= g.users
    })
    instances.push(instance)
  }
  plan.groups.forEach((g, i) => {
    setTimeout(() => startGroup(g, i), g.startS * 1000)
  })
  const tick = setInterval(() => {
    const t = Math.round((Date.now() - started) / 1000)
    process.send({ t, users, ...bucket })
    bucket = empty()
  }, SEND_EVERY_MS)
  const endS = Math.max(...plan.groups.map((g) => g.stopS))
  setTimeout(
    () => {
      clearInterval(tick)
      for (const timer of timers) clearTimeout(timer)
      for (const i of instances) i.stop()
      process.send({ done: true, t: (Date.now() - started) / 1000, ...bucket })
      setTimeout(() => process.exit(0), 200)
    },
    endS * 1000 + 500,
  )
}

process.once('message', run)
