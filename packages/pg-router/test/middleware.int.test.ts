import type { AddressInfo } from 'node:net'
import { type Lab, startLab } from '@resilient/lab'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'
import { rywSession } from '@resilient/pg-router/express'
import { rywPlugin } from '@resilient/pg-router/fastify'
import express from 'express'
import Fastify, { type FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// One 3-node lab (about 5-20 s to boot). Replay is paused on both replicas, so a read that
// goes to a replica cannot see a fresh write: only the session token can make it visible.
// Patroni 3 resumes paused replay on PostgreSQL 14+ in its HA loop unless the cluster is in
// maintenance mode, so the cluster is put in maintenance mode (`pause`) first.
let lab: Lab
let db: PgRouter
let paused: string[] = []
let expressUrl: string
let fastifyApp: FastifyInstance
const closers: (() => Promise<unknown>)[] = []

/** Fails the test if replay was resumed behind our back (the control would prove nothing). */
async function expectReplayPaused() {
  for (const r of paused) expect(await lab.sql('SELECT pg_is_wal_replay_paused()', r)).toEqual([['t']])
}

beforeAll(async () => {
  lab = await startLab({ nodes: 3, redis: false })
  await lab.waitForReplicas(2)
  db = createPgRouter({
    patroni: { endpoints: lab.patroni.endpoints },
    connection: lab.postgres,
    pool: { max: 4 },
  })
  await db.ready()
  await db.write('CREATE TABLE ryw_items (id serial PRIMARY KEY, label text NOT NULL)')
  // The table must reach the replicas before replay stops.
  const replicas = await lab.replicas()
  for (const r of replicas) {
    for (let i = 0; i < 100; i++) {
      const rows = await lab.sql("SELECT to_regclass('public.ryw_items') IS NOT NULL", r.name)
      if (rows[0]?.[0] === 't') break
      await new Promise((res) => setTimeout(res, 100))
    }
  }
  // The router must know both replicas as readable before the control read means anything.
  for (let i = 0; i < 300; i++) {
    const t = db.topology()
    if (t.replicas.length === 2 && t.replicas.every((r) => r.healthy)) break
    await new Promise((res) => setTimeout(res, 100))
  }
  expect(db.topology().replicas.filter((r) => r.healthy)).toHaveLength(2)
  // maintenance mode on, then replay paused on each replica (the lab does both)
  for (const r of replicas) await lab.pauseReplay(r.name)
  paused = replicas.map((r) => r.name)

  const app = express()
  app.use(express.json())
  app.use(rywSession(db))
  app.post('/items', async (req, res) => {
    const s = req.db
    const r = await s.write<{ id: number }>('INSERT INTO ryw_items (label) VALUES ($1) RETURNING id', [
      req.body.label,
    ])
    res.status(201).json({ id: r.rows[0]!.id })
  })
  app.get('/items/:id', async (req, res) => {
    const s = req.db
    const r = await s.read('SELECT id, label FROM ryw_items WHERE id = $1', [Number(req.params.id)])
    if (r.rows.length === 0) res.status(404).json({ found: false })
    else res.json(r.rows[0])
  })
  const server = app.listen(0, '127.0.0.1')
  await new Promise((r) => server.once('listening', r))
  closers.push(() => new Promise((r) => server.close(r)))
  expressUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  fastifyApp = Fastify()
  await fastifyApp.register(rywPlugin, { db, cookie: 'ryw' })
  fastifyApp.post<{ Body: { label: string } }>('/items', async (req, reply) => {
    const s = req.db
    const r = await s.write<{ id: number }>('INSERT INTO ryw_items (label) VALUES ($1) RETURNING id', [
      req.body.label,
    ])
    reply.code(201)
    return { id: r.rows[0]!.id }
  })
  fastifyApp.get<{ Params: { id: string } }>('/items/:id', async (req, reply) => {
    const s = req.db
    const r = await s.read('SELECT id, label FROM ryw_items WHERE id = $1', [Number(req.params.id)])
    if (r.rows.length === 0) return reply.code(404).send({ found: false })
    return r.rows[0]
  })
  await fastifyApp.listen({ port: 0, host: '127.0.0.1' })
  closers.push(() => fastifyApp.close())
})

afterAll(async () => {
  await Promise.all(closers.map((c) => c()))
  if (lab && paused.length) await lab.resumeReplay().catch(() => {})
  await db?.close()
  await lab?.down()
})

describe('read-your-writes through real HTTP servers, replicas not replaying', () => {
  it('control: a read without the token goes to a replica and misses the write', async () => {
    const r = await db.write<{ id: number }>("INSERT INTO ryw_items (label) VALUES ('control') RETURNING id")
    const id = r.rows[0]!.id
    const viaReplica = await db.read('SELECT id FROM ryw_items WHERE id = $1', [id])
    expect(viaReplica.rows).toEqual([])
    const res = await fetch(`${expressUrl}/items/${id}`)
    expect(res.status).toBe(404)
    await expectReplayPaused()
  })

  it('express: the POST response carries a token; a GET with it reads its own write', async () => {
    const post = await fetch(`${expressUrl}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ label: 'from express' }),
    })
    expect(post.status).toBe(201)
    const token = post.headers.get('x-ryw-token')
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/)
    const { id } = (await post.json()) as { id: number }

    const mine = await fetch(`${expressUrl}/items/${id}`, { headers: { 'x-ryw-token': token! } })
    expect(mine.status).toBe(200)
    expect(await mine.json()).toEqual({ id, label: 'from express' })
    // A token that did not move is not sent again.
    expect(mine.headers.get('x-ryw-token')).toBeNull()

    const other = await fetch(`${expressUrl}/items/${id}`)
    expect(other.status).toBe(404)
    await expectReplayPaused()
  })

  it('fastify: the token travels in a cookie as well', async () => {
    const base = `http://127.0.0.1:${(fastifyApp.server.address() as AddressInfo).port}`
    const post = await fetch(`${base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ label: 'from fastify' }),
    })
    expect(post.status).toBe(201)
    const { id } = (await post.json()) as { id: number }
    const token = post.headers.get('x-ryw-token')
    const cookie = post.headers.getSetCookie().find((c) => c.startsWith('ryw='))
    expect(cookie).toBe(`ryw=${token}; Path=/; Max-Age=300; HttpOnly; SameSite=Lax`)

    const mine = await fetch(`${base}/items/${id}`, { headers: { cookie: `ryw=${token}` } })
    expect(mine.status).toBe(200)
    expect(await mine.json()).toEqual({ id, label: 'from fastify' })
    const other = await fetch(`${base}/items/${id}`)
    expect(other.status).toBe(404)
    await expectReplayPaused()
  })

  it('once replay resumes, the replicas serve the row without a token', async () => {
    const post = await fetch(`${expressUrl}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ label: 'later' }),
    })
    const { id } = (await post.json()) as { id: number }
    await lab.resumeReplay()
    paused = []
    let status = 0
    for (let i = 0; i < 100 && status !== 200; i++) {
      status = (await fetch(`${expressUrl}/items/${id}`)).status
      if (status !== 200) await new Promise((r) => setTimeout(r, 50))
    }
    expect(status).toBe(200)
  })
})
