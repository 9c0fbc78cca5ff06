import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { createCertificateAuthority, type Lab, redisCommand, startLab } from '@resilient/lab'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { formatStatus } from '../src/commands.js'
import { apiRequest } from '../src/http.js'

const seconds = (t0: number) => ((performance.now() - t0) / 1000).toFixed(1)

/** Sends a plain-text inline PING and resolves with what came back within `ms` ('' when nothing). */
function plainPing(port: number, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let got = ''
    const socket = connect({ host: '127.0.0.1', port })
    const done = () => {
      clearTimeout(timer)
      socket.destroy()
      resolve(got)
    }
    const timer = setTimeout(done, ms)
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (d) => {
      got += d.toString('latin1')
    })
    socket.on('error', (err) => {
      got += `error: ${err.message}`
      done()
    })
    socket.on('close', done)
  })
}

/** A plain-HTTP GET; resolves with the status or the error's message. */
function plainGet(url: string): Promise<string> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent: false, timeout: 3000 }, (res) => {
      res.resume()
      resolve(`status ${res.statusCode}`)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', (err) => resolve(`error: ${err.message}`))
    req.end()
  })
}

describe('a lab with tls: true', () => {
  let lab: Lab
  let sentinelLab: Lab
  let otherCa: string
  let otherCaDir: string
  const logs: string[] = []
  const clients: Array<Redis | Cluster | pg.Client> = []
  let t0 = 0

  beforeAll(async () => {
    t0 = performance.now()
    otherCaDir = mkdtempSync(join(tmpdir(), 'lab-other-ca-'))
    otherCa = readFileSync(
      (await createCertificateAuthority(otherCaDir, { commonName: 'not the lab' })).certPath,
      'utf8',
    )
    // Booted together: a Postgres + Redis (replica, endpoint, Cluster) lab and a Sentinel lab.
    ;[lab, sentinelLab] = await Promise.all([
      startLab({ nodes: 2, tls: true, redisReplica: true, redisCluster: true, log: (l) => logs.push(l) }),
      startLab({ nodes: 0, tls: true, sentinel: true, log: (l) => logs.push(l) }),
    ])
    console.log(`TLS labs ready in ${seconds(t0)} s (${lab.bootSeconds} s and ${sentinelLab.bootSeconds} s)`)
  })

  afterAll(async () => {
    for (const c of clients) {
      if (c instanceof pg.Client) await c.end().catch(() => {})
      else c.disconnect()
    }
    await Promise.all([lab?.down(), sentinelLab?.down()])
    rmSync(otherCaDir, { recursive: true, force: true })
    console.log(`tls.int.test.ts: ${seconds(t0)} s in all`)
  })

  function pgClient(config: pg.ClientConfig): pg.Client {
    const c = new pg.Client({ host: '127.0.0.1', connectionTimeoutMillis: 5000, ...config })
    c.on('error', () => {})
    clients.push(c)
    return c
  }

  async function leaderPort(): Promise<number> {
    return (await lab.waitForPrimary()).port
  }

  /** The first error a client reports while connecting (ioredis's connect() only says "Connection is closed"). */
  async function connectError(options: RedisOptions): Promise<string> {
    const c = new Redis({ host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, ...options })
    clients.push(c)
    const first = new Promise<string>((resolve) => c.once('error', (e: Error) => resolve(e.message)))
    const connected = await c
      .connect()
      .then(
        () => c.ping(),
        () => undefined,
      )
      .catch(() => undefined)
    return connected === 'PONG' ? 'connected' : first
  }

  function redis(options: RedisOptions): Redis {
    const c = new Redis({
      host: '127.0.0.1',
      maxRetriesPerRequest: 1,
      lazyConnect: true,
      retryStrategy: () => null,
      ...options,
    })
    c.on('error', () => {})
    clients.push(c)
    return c
  }

  it('exposes the CA and credentials for clients; the CLI-style description names the CA', async () => {
    const tls = lab.tls!
    expect(tls.ca).toMatch(/^-----BEGIN CERTIFICATE-----/)
    expect(readFileSync(tls.caPath, 'utf8')).toBe(tls.ca)
    expect(lab.postgres).toMatchObject({ user: 'postgres', database: 'postgres', ssl: { ca: tls.ca } })
    expect(lab.postgresApp).toMatchObject({ user: 'app', ssl: { ca: tls.ca, rejectUnauthorized: true } })
    expect(lab.patroni.endpoints.every((e) => e.startsWith('https://127.0.0.1:'))).toBe(true)
    expect(lab.patroni).toMatchObject({ tls: { ca: tls.ca }, auth: { username: 'patroni' } })
    expect(lab.redis).toMatchObject({ host: '127.0.0.1', username: 'app', tls: { ca: tls.ca } })
    expect(lab.redisEndpoint).toMatchObject({ username: 'app', tls: { ca: tls.ca } })
    expect(lab.redisCluster).toMatchObject({ username: 'app', tls: { ca: tls.ca } })
    expect(sentinelLab.sentinel).toMatchObject({
      name: 'resilient',
      username: 'app',
      tls: { ca: sentinelLab.tls!.ca },
    })
    expect(lab.connectionString(undefined, { app: true })).toMatch(
      /^postgres:\/\/app:[^@]+@127\.0\.0\.1:\d+\/postgres\?sslmode=verify-full&sslrootcert=%2F.*ca\.crt$/,
    )
  })

  it('PostgreSQL: TLS with the CA accepted, plain TCP refused, a wrong CA rejected; replication runs over TLS', async () => {
    const port = await leaderPort()
    const ok = pgClient({ ...lab.postgresApp!, port })
    await ok.connect()
    const row = (await ok.query('select ssl, version from pg_stat_ssl where pid = pg_backend_pid()')).rows[0]
    expect(row).toEqual({ ssl: true, version: expect.stringMatching(/^TLSv1\.[23]$/) })
    // The connection string carries sslmode=verify-full and the CA file: node-postgres reads both.
    const viaUrl = pgClient({ connectionString: lab.connectionString(undefined, { app: true }) })
    await viaUrl.connect()
    expect((await viaUrl.query('select current_user as u')).rows[0].u).toBe('app')

    const { ssl: _ssl, ...noTls } = lab.postgresApp!
    const plain = pgClient({ ...noTls, port, ssl: false })
    const plainErr = await plain.connect().then(
      () => undefined,
      (e: { code?: string; message: string }) => e,
    )
    expect(plainErr?.code).toBe('28000') // no pg_hba.conf entry ... no encryption
    expect(plainErr?.message).toMatch(/no encryption/)

    const wrong = pgClient({ ...noTls, port, ssl: { ca: otherCa } })
    const wrongErr = await wrong.connect().then(
      () => undefined,
      (e: { code?: string }) => e,
    )
    expect(wrongErr?.code).toMatch(
      /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT/,
    )

    const badPw = pgClient({ ...lab.postgresApp!, port, password: 'not-the-password' })
    expect(
      await badPw.connect().then(
        () => 'connected',
        (e: { code?: string }) => e.code,
      ),
    ).toBe('28P01')

    // Patroni's own replication connection is a TLS one too.
    expect(
      await lab.sql(
        'select r.application_name, s.ssl from pg_stat_replication r join pg_stat_ssl s using (pid)',
      ),
    ).toEqual([[lab.members.find((m) => m.port !== port)!.name, 't']])
  })

  it("Patroni's REST API: HTTPS with the CA; Basic auth on the unsafe verbs (401 without it); patronictl verifies", async () => {
    const [endpoint] = lab.patroni.endpoints
    const { ca, auth } = { ca: lab.tls!.ca, auth: lab.patroni.auth! }
    const cluster = await apiRequest(`${endpoint}/cluster`, { ca })
    expect(cluster.status).toBe(200)
    expect(cluster.json<{ members: Array<{ api_url: string }> }>().members[0]!.api_url).toMatch(/^https:/)
    expect(await plainGet(`${endpoint!.replace('https:', 'http:')}/cluster`)).toMatch(/^error: /)
    await expect(apiRequest(`${endpoint}/cluster`, { ca: otherCa })).rejects.toThrow(
      /unable to verify|self.signed|local issuer/,
    )
    expect((await apiRequest(`${endpoint}/reload`, { method: 'POST', ca })).status).toBe(401)
    expect(
      (
        await apiRequest(`${endpoint}/reload`, {
          method: 'POST',
          ca,
          auth: { ...auth, password: 'wrong-password' },
        })
      ).status,
    ).toBe(401)
    expect((await apiRequest(`${endpoint}/reload`, { method: 'POST', ca, auth })).status).toBeLessThan(300)
    // patronictl with a member's configuration: its ctl section (cacert) and restapi auth.
    const member = lab.state.members[0]!
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'patronictl',
        ['-c', member.configPath, 'reload', lab.patroni.scope, member.name, '--force'],
        { timeout: 30_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${stderr}${stdout}`)) : resolve(stdout)),
      ),
    )
    expect(out).toMatch(/Reload request received|No changes to reload/)
  })

  it('Redis: TLS only with the ACL user; plain TCP, no AUTH, a wrong password or a wrong CA are refused', async () => {
    const r = redis(lab.redis)
    expect(await r.ping()).toBe('PONG')
    expect(await r.call('ACL', 'WHOAMI')).toBe('app')
    expect(await plainPing(lab.redis.port, 1000)).not.toContain('+PONG')
    // TLS but no AUTH: the default user is off.
    const { username: _u, password: _p, ...noAuth } = lab.redis
    expect(await redisCommand(lab.redis.port, ['PING'], { tls: lab.redis.tls! })).toMatchObject({
      message: expect.stringMatching(/^NOAUTH/),
    })
    expect(await connectError({ ...lab.redis, password: 'wrong-password' })).toMatch(/WRONGPASS/)
    expect(await connectError({ ...noAuth, tls: { ca: otherCa } })).toMatch(
      /unable to verify|self.signed|local issuer/,
    )
    // The replica streams over TLS (tls-replication yes).
    const replica = lab.redisNodes.find((n) => n.port !== lab.redis.port)!
    expect(String(await lab.redisCommand(['INFO', 'replication'], replica.port))).toContain(
      'master_link_status:up',
    )
  })

  it('the fixed endpoint passes TLS through: the certificate is checked against the name the client asks for', async () => {
    const e = lab.redisEndpoint!
    expect(await redis(e).ping()).toBe('PONG')
    expect(await redis({ ...e, tls: { ca: e.tls!.ca, servername: 'localhost' } }).ping()).toBe('PONG')
    expect(await connectError({ ...e, tls: { ca: e.tls!.ca, servername: 'db.example.com' } })).toMatch(
      /does not match certificate's altnames|Hostname\/IP does not match/,
    )
  })

  it('Redis Cluster over TLS (tls-cluster yes): ioredis.Cluster works across slots and through a failover', async () => {
    const info = lab.redisCluster!
    const c = new Cluster(
      info.nodes.map((n) => ({ host: n.host, port: n.port })),
      {
        redisOptions: {
          username: info.username,
          password: info.password,
          tls: info.tls,
          maxRetriesPerRequest: 3,
        },
      },
    )
    c.on('error', () => {})
    clients.push(c)
    for (let i = 0; i < 30; i++) await c.set(`k:${i}`, String(i))
    const t1 = performance.now()
    const result = await lab.failoverRedisClusterMaster('k:3')
    console.log(`TLS failoverRedisClusterMaster: ${result.master} -> ${result.promoted} in ${seconds(t1)} s`)
    for (let i = 0; i < 30; i++) expect(await c.get(`k:${i}`)).toBe(String(i))
    await c.set('k:3', 'after')
    expect(await c.get('k:3')).toBe('after')
  })

  it('Postgres chaos with TLS: killPrimary, a new writable leader, startMember streams again; switchover; setReadOnly', async () => {
    const t1 = performance.now()
    const killed = await lab.killPrimary()
    const next = await lab.waitForPrimary({ not: killed, timeoutMs: 60_000 })
    console.log(`TLS killPrimary: ${killed} -> ${next.name} writable after ${seconds(t1)} s`)
    await lab.sql('create table tls_probe (id int primary key)')
    const back = await lab.startMember(killed)
    console.log(
      `TLS startMember(${killed}): ${back.role} in ${back.seconds} s${back.reinitialized ? ' (re-cloned)' : ''}`,
    )
    await lab.waitForReplicas(1, { timeoutMs: 60_000 })

    const t2 = performance.now()
    const after = await lab.switchover({ candidate: killed })
    console.log(`TLS switchover to ${after.name} in ${seconds(t2)} s`)
    await lab.waitForReplicas(1, { timeoutMs: 60_000 })
    expect(await lab.sql('select count(*) from tls_probe')).toEqual([['0']])

    await lab.setReadOnly(true)
    await expect(lab.sql('insert into tls_probe values (1)')).rejects.toThrow(/read-only transaction/)
    await lab.setReadOnly(false)
    await lab.sql('insert into tls_probe values (1)')
  })

  it('Redis chaos with TLS: pause/resume, kill/restart, a demotion behind the endpoint', async () => {
    const { port } = lab.redis
    await lab.pauseRedis()
    try {
      await expect(lab.redisCommand(['PING'], port, 300)).rejects.toThrow(/no reply/)
    } finally {
      await lab.resumeRedis()
    }
    expect(await lab.redisCommand(['PING'])).toBe('PONG')
    await lab.killRedis()
    await lab.restartRedis()
    expect(await redis(lab.redis).ping()).toBe('PONG')

    const before = redis(lab.redisEndpoint!)
    await before.set('d', '1')
    const demotion = await lab.demoteRedisPrimary()
    await expect(before.set('d', '2')).rejects.toThrow(/READONLY/)
    const fresh = redis(lab.redisEndpoint!)
    await fresh.set('d', '3')
    expect(lab.redisNodes.find((n) => n.name === demotion.promoted)!.port).toBe(lab.redis.port)
  })

  it('Sentinel with TLS and ACLs: killRedisPrimary, the sentinels promote the replica; ioredis follows over TLS', async () => {
    const s = sentinelLab.sentinel!
    const r = sentinelLab.redis
    const viaSentinel = () =>
      redis({
        sentinels: s.sentinels,
        name: s.name,
        sentinelUsername: s.username,
        sentinelPassword: s.password,
        sentinelTLS: s.tls,
        enableTLSForSentinelMode: true,
        username: r.username,
        password: r.password,
        tls: r.tls,
      })
    const before = viaSentinel()
    await before.set('s', '1')
    const t1 = performance.now()
    const killed = await sentinelLab.killRedisPrimary()
    const next = await sentinelLab.waitForRedisFailover({ timeoutMs: 30_000 })
    console.log(`TLS sentinel failover in ${seconds(t1)} s`)
    expect(next.port).not.toBe(killed.port)
    const after = viaSentinel()
    expect(await after.get('s')).toBe('1')
    await sentinelLab.restartRedisNode(killed.name)
    const role = await sentinelLab.redisCommand(['ROLE'], killed.port)
    expect(Array.isArray(role) && role[0]).toBe('slave')
  })

  it('rotatePostgresPassword: open sessions keep working, new logins need the new password, on replicas too', async () => {
    const port = await leaderPort()
    const old = { ...lab.postgresApp! }
    const open = pgClient({ ...old, port })
    await open.connect()
    await lab.rotatePostgresPassword('Rotated-pw-1')
    expect(lab.postgresApp!.password).toBe('Rotated-pw-1')
    expect((await open.query('select 1 as one')).rows[0].one).toBe(1)
    const stale = pgClient({ ...old, port })
    expect(
      await stale.connect().then(
        () => 'connected',
        (e: { code?: string }) => e.code,
      ),
    ).toBe('28P01')
    const fresh = pgClient({ ...lab.postgresApp!, port })
    await fresh.connect()
    const replica = (await lab.replicas())[0]!
    const onReplica = pgClient({ ...lab.postgresApp!, port: replica.port })
    await onReplica.connect()
    expect((await onReplica.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(true)
    // A random one by default.
    await lab.rotatePostgresPassword()
    expect(lab.postgresApp!.password).not.toBe('Rotated-pw-1')
    await expect(lab.rotatePostgresPassword('short')).rejects.toThrow(/8 to 128/)
  })

  it('rotateRedisPassword: authenticated connections stay, a new AUTH needs the new password (servers, sentinels, cluster)', async () => {
    const old = { ...lab.redis }
    const open = redis(old)
    await open.connect()
    await lab.rotateRedisPassword('Rotated-redis-1')
    expect(lab.redis.password).toBe('Rotated-redis-1')
    expect(await open.ping()).toBe('PONG')
    expect(await connectError(old)).toMatch(/WRONGPASS/)
    expect(await redis(lab.redis).ping()).toBe('PONG')
    const node = lab.redisCluster!.nodes[0]!
    expect(await redis({ ...lab.redis, port: node.port }).ping()).toBe('PONG')
    // keepOld: both work until the next rotation.
    await lab.rotateRedisPassword('Rotated-redis-2', { keepOld: true })
    expect(await redis({ ...lab.redis, password: 'Rotated-redis-1' }).ping()).toBe('PONG')
    expect(await redis(lab.redis).ping()).toBe('PONG')
    // The sentinels too.
    const s = sentinelLab.sentinel!
    await sentinelLab.rotateRedisPassword('Rotated-sentinel-1')
    const reply = await redisCommand(s.sentinels[0]!.port, ['PING'], {
      tls: s.tls!,
      auth: { username: 'app', password: 'Rotated-sentinel-1' },
    })
    expect(reply).toBe('PONG')
  })

  it('never shows a password or a private key: inspect, status, state file, errors and logs', async () => {
    const st = lab.state
    const secrets = [
      st.postgres.password,
      st.postgres.replicationPassword,
      st.postgres.appPassword!,
      st.patroniAuth!.password,
      st.redisAuth!.password,
      st.redisAuth!.adminPassword,
      'Rotated-pw-1',
      'Rotated-redis-1',
    ]
    const keys = [st.tls!.keyPath, st.tls!.caKeyPath].map((p) =>
      readFileSync(p, 'utf8').split('\n').slice(1, -2).join(''),
    )
    expect(keys.every((k) => k.length > 40)).toBe(true)
    // Errors that carry server output: psql echoes a bad value; Redis a bad command; a failed AUTH.
    const errors = [
      await lab.sql(`select '${st.postgres.password}'::int`).catch((e: Error) => e),
      await lab.sql(`select '${st.postgres.appPassword}'::int`, lab.members[0]!.name).catch((e: Error) => e),
      await lab.rotatePostgresPassword(`${st.postgres.password} x`).catch((e: Error) => e),
      await lab.rotateRedisPassword(`short`).catch((e: Error) => e),
      await redisCommand(lab.redis.port, ['PING'], {
        tls: lab.redis.tls!,
        auth: { username: 'app', password: st.postgres.password },
      }).catch((e: Error) => e),
    ]
    for (const e of errors) expect(e).toBeInstanceOf(Error)
    expect(String((errors[0] as Error).message)).toContain('[redacted]')
    const status = await lab.status()
    const shown = [
      inspect(lab, { showHidden: true, depth: 10 }),
      inspect(sentinelLab, { showHidden: true, depth: 10 }),
      JSON.stringify(status),
      formatStatus(status, []),
      ...errors.map((e) => inspect(e, { depth: 10 })),
      logs.join('\n'),
    ].join('\n')
    for (const s of secrets) expect(shown).not.toContain(s)
    // The state (lab.json) holds the passwords by design (mode 0600), never key material.
    const stateText = readFileSync(join(lab.baseDir, 'lab.json'), 'utf8')
    for (const k of [...keys, ...keys.map((k) => k.slice(0, 40))]) {
      expect(stateText).not.toContain(k)
      expect(JSON.stringify(lab.state)).not.toContain(k)
      expect(shown).not.toContain(k.slice(0, 40))
    }
  })
})
