import { createHash, createHmac, X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer as createTlsServer } from 'node:tls'
import { inspect } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  patroniConfig,
  quoteConf,
  redisArgs,
  redisClusterArgs,
  redisSecretsConf,
  sentinelConf,
} from '../src/config.js'
import { apiRequest } from '../src/http.js'
import { stateSecrets } from '../src/lifecycle.js'
import { IDNA_MODULE, requirements } from '../src/packages.js'
import { describeCommand, encodeCommand, parseReply, redisCommand } from '../src/resp.js'
import { checkPassword, scramVerifier } from '../src/scram.js'
import type { LabState } from '../src/state.js'
import {
  type CertificateAuthority,
  createCertificateAuthority,
  type IssuedCertificate,
  issueCertificate,
  opensslDate,
  subjectAltName,
} from '../src/tls.js'
import { redactSecrets } from '../src/util.js'

const files = { caPath: '/l/tls/ca.crt', certPath: '/l/tls/server.crt', keyPath: '/l/tls/server.key' }
const auth = {
  username: 'app',
  password: 'app-secret-1',
  adminUser: 'admin',
  adminPassword: 'admin-secret-1',
}

describe('configuration with TLS', () => {
  const base = {
    scope: 'lab-x',
    name: 'pg1',
    port: 15001,
    apiPort: 15002,
    etcdClientPort: 15003,
    dataDir: '/l/pg1/data',
    socketDir: '/l/pg1',
    pgpassPath: '/l/pg1/pgpass',
    superuser: { username: 'postgres', password: 'pw' },
    replication: { username: 'replicator', password: 'rpw' },
    synchronousMode: false,
  }
  const cfg = patroniConfig({
    ...base,
    tls: files,
    restapiAuth: { username: 'patroni', password: 'api-pw' },
  }) as any

  it('PostgreSQL: ssl on with the lab certificate; pg_hba has hostssl + scram only (no trust, no plain host line)', () => {
    expect(cfg.postgresql.parameters).toMatchObject({
      ssl: 'on',
      ssl_cert_file: files.certPath,
      ssl_key_file: files.keyPath,
    })
    expect(cfg.postgresql.pg_hba).toEqual([
      'local all all scram-sha-256',
      'hostssl replication replicator 127.0.0.1/32 scram-sha-256',
      'hostssl all all 127.0.0.1/32 scram-sha-256',
    ])
    expect(cfg.postgresql.pg_hba.join('\n')).not.toMatch(/trust|^host /m)
    // Patroni's own connections (replication, pg_rewind) verify the server against the CA.
    for (const who of ['superuser', 'replication'])
      expect(cfg.postgresql.authentication[who]).toMatchObject({
        sslmode: 'verify-full',
        sslrootcert: files.caPath,
      })
  })

  it('REST API: HTTPS with the certificate, Basic auth; Patroni and patronictl verify the CA (ctl)', () => {
    expect(cfg.restapi).toEqual({
      listen: '127.0.0.1:15002',
      connect_address: '127.0.0.1:15002',
      certfile: files.certPath,
      keyfile: files.keyPath,
      cafile: files.caPath,
      authentication: { username: 'patroni', password: 'api-pw' },
    })
    expect(cfg.ctl).toEqual({ insecure: false, cacert: files.caPath })
  })

  it('without TLS nothing of it appears', () => {
    const plain = patroniConfig(base) as any
    expect(plain.ctl).toBeUndefined()
    expect(plain.postgresql.parameters.ssl).toBeUndefined()
    expect(plain.restapi.certfile).toBeUndefined()
    expect(plain.postgresql.authentication.replication).toEqual({ username: 'replicator', password: 'rpw' })
  })

  it('Redis: tls-port only (port 0), no client certificates, replication over TLS; the cluster bus too', () => {
    const args = redisArgs({ port: 16000, dir: '/l/redis0', tls: files })
    const pairs = Object.fromEntries(args.flatMap((a, i) => (a.startsWith('--') ? [[a, args[i + 1]]] : [])))
    expect(pairs).toMatchObject({
      '--port': '0',
      '--tls-port': '16000',
      '--tls-cert-file': files.certPath,
      '--tls-key-file': files.keyPath,
      '--tls-ca-cert-file': files.caPath,
      '--tls-auth-clients': 'no',
      '--tls-replication': 'yes',
    })
    expect(args.filter((a) => a === '--port')).toHaveLength(1)
    expect(redisClusterArgs({ port: 1, busPort: 2, dir: '/d', tls: files }).join(' ')).toContain(
      '--tls-cluster yes',
    )
    expect(redisClusterArgs({ port: 1, busPort: 2, dir: '/d' }).join(' ')).not.toContain('tls')
    // No password on a command line (ps shows it).
    expect(args.join(' ')).not.toContain(auth.password)
  })

  it('Redis secrets: default user off, the admin and app users, masteruser; quoted for the config parser', () => {
    const conf = redisSecretsConf(auth)
    expect(conf.split('\n')).toEqual([
      'user default off',
      'user "admin" on ">admin-secret-1" ~* &* +@all',
      'user "app" on ">app-secret-1" ~* &* +@all',
      'masteruser "admin"',
      'masterauth "admin-secret-1"',
      '',
    ])
    expect(quoteConf('a"b\\c')).toBe('"a\\"b\\\\c"')
  })

  it('Sentinel: tls-port only, ACL users, auth to the servers and to the other sentinels', () => {
    const conf = sentinelConf({ port: 17000, dir: '/l/s0', masterPort: 16000, quorum: 2, tls: files, auth })
    const lines = conf.split('\n')
    expect(lines).toEqual(
      expect.arrayContaining([
        'port 0',
        'tls-port 17000',
        'tls-replication yes',
        'tls-auth-clients no',
        'user default off',
        'sentinel auth-user resilient "admin"',
        'sentinel auth-pass resilient "admin-secret-1"',
        'sentinel sentinel-user "admin"',
        'sentinel sentinel-pass "admin-secret-1"',
      ]),
    )
    expect(lines.filter((l) => l.startsWith('port '))).toEqual(['port 0'])
  })

  it('a TLS lab needs openssl, and python3-idna for patronictl over HTTPS', () => {
    const pkgs = requirements({ nodes: 3, redis: true, sentinel: false, tls: true }).map((r) => r.pkg)
    expect(pkgs).toEqual(expect.arrayContaining(['openssl', 'python3-idna']))
    expect(
      requirements({ nodes: 0, redis: true, sentinel: false, tls: true }).map((r) => r.binary),
    ).not.toContain(IDNA_MODULE)
    expect(requirements({ nodes: 3, redis: true, sentinel: false }).map((r) => r.pkg)).not.toContain(
      'openssl',
    )
  })
})

describe('certificates made with openssl', () => {
  let dir: string
  let ca: CertificateAuthority
  let server: IssuedCertificate
  let other: CertificateAuthority

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lab-tls-unit-'))
    ca = await createCertificateAuthority(join(dir, 'ca'), { commonName: 'unit CA' })
    server = await issueCertificate(ca, join(dir, 'ca'))
    other = await createCertificateAuthority(join(dir, 'other'))
  })

  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('a CA and a server certificate for 127.0.0.1 and localhost that chains to it; keys are 0600', () => {
    const caCert = new X509Certificate(readFileSync(ca.certPath))
    const cert = new X509Certificate(readFileSync(server.certPath))
    expect(caCert.ca).toBe(true)
    expect(cert.ca).toBe(false)
    expect(cert.verify(caCert.publicKey)).toBe(true)
    expect(cert.checkIssued(caCert)).toBe(true)
    expect(cert.subjectAltName).toBe('IP Address:127.0.0.1, DNS:localhost')
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1')
    expect(cert.checkHost('localhost')).toBe('localhost')
    expect(cert.checkHost('example.com')).toBeUndefined()
    expect(new Date(cert.validFrom).getTime()).toBeLessThan(Date.now())
    expect(new Date(cert.validTo).getTime()).toBeGreaterThan(Date.now() + 365 * 86_400_000)
    for (const key of [ca.keyPath, server.keyPath]) expect(statSync(key).mode & 0o777).toBe(0o600)
    expect(cert.checkIssued(new X509Certificate(readFileSync(other.certPath)))).toBe(false)
  })

  it('bad certificates for tests: expired, or for another host', async () => {
    const expired = await issueCertificate(ca, join(dir, 'bad'), {
      name: 'expired',
      notBefore: new Date('2020-01-01T00:00:00Z'),
      notAfter: new Date('2020-01-02T00:00:00Z'),
    })
    const cert = new X509Certificate(readFileSync(expired.certPath))
    expect(new Date(cert.validTo).getTime()).toBe(Date.parse('2020-01-02T00:00:00Z'))
    const elsewhere = await issueCertificate(ca, join(dir, 'bad'), {
      name: 'elsewhere',
      hosts: ['db.example.com'],
    })
    const e = new X509Certificate(readFileSync(elsewhere.certPath))
    expect(e.subjectAltName).toBe('DNS:db.example.com')
    expect(e.checkIP('127.0.0.1')).toBeUndefined()
    await expect(issueCertificate(ca, dir, { hosts: [] })).rejects.toThrow(/at least one host/)
    expect(opensslDate(new Date('2020-01-02T03:04:05.678Z'))).toBe('20200102030405Z')
    expect(subjectAltName(['127.0.0.1', '::1', 'localhost'])).toBe('IP:127.0.0.1,IP:::1,DNS:localhost')
  })

  it('the RESP client: TLS with the CA, AUTH pipelined; a wrong CA, a host name mismatch and a failed AUTH reject', async () => {
    const seen: string[][] = []
    const server2 = createTlsServer(
      { cert: readFileSync(server.certPath), key: readFileSync(server.keyPath) },
      (socket) => {
        let buf = Buffer.alloc(0)
        socket.on('data', (d) => {
          buf = Buffer.concat([buf, d])
          for (;;) {
            const parsed = parseReply(buf)
            if (!parsed) return
            buf = buf.subarray(parsed.next)
            const args = parsed.value as string[]
            seen.push(args)
            if (args[0] === 'AUTH')
              socket.write(
                args[2] === 'good-password' ? '+OK\r\n' : '-WRONGPASS invalid username-password pair\r\n',
              )
            else socket.write('+PONG\r\n')
          }
        })
      },
    )
    await new Promise<void>((r) => server2.listen(0, '127.0.0.1', r))
    const port = (server2.address() as AddressInfo).port
    const ca0 = readFileSync(ca.certPath, 'utf8')
    try {
      expect(
        await redisCommand(port, ['PING'], {
          tls: { ca: ca0 },
          auth: { username: 'app', password: 'good-password' },
        }),
      ).toBe('PONG')
      expect(seen).toEqual([['AUTH', 'app', 'good-password'], ['PING']])
      const failed = await redisCommand(port, ['PING'], {
        tls: { ca: ca0 },
        auth: { username: 'app', password: 'bad-password' },
      }).catch((e: Error) => e)
      expect(failed).toBeInstanceOf(Error)
      expect((failed as Error).message).toMatch(/AUTH as app on 127\.0\.0\.1:\d+ failed: WRONGPASS/)
      expect(inspect(failed)).not.toContain('bad-password')
      await expect(
        redisCommand(port, ['PING'], { tls: { ca: readFileSync(other.certPath, 'utf8') } }),
      ).rejects.toThrow(/unable to verify|self.signed|local issuer/)
      await expect(
        redisCommand(port, ['PING'], { tls: { ca: ca0, servername: 'db.example.com' } }),
      ).rejects.toThrow(/altnames|does not match/)
      expect(await redisCommand(port, ['PING'], { tls: { ca: ca0, servername: 'localhost' } })).toBe('PONG')
    } finally {
      server2.close()
    }
  })

  it('the REST client: HTTPS with the CA, Basic auth; errors name the URL, never the password', async () => {
    const headers: Array<string | undefined> = []
    const api = createHttpsServer(
      { cert: readFileSync(server.certPath), key: readFileSync(server.keyPath) },
      (req, res) => {
        headers.push(req.headers.authorization)
        if (req.url === '/slow') return // never answers
        let body = ''
        req.on('data', (c) => (body += c))
        req.on('end', () => res.end(JSON.stringify({ method: req.method, body })))
      },
    )
    await new Promise<void>((r) => api.listen(0, '127.0.0.1', r))
    const url = `https://127.0.0.1:${(api.address() as AddressInfo).port}`
    const ca0 = readFileSync(ca.certPath, 'utf8')
    try {
      const res = await apiRequest(`${url}/config`, {
        method: 'PATCH',
        body: { pause: true },
        ca: ca0,
        auth: { username: 'patroni', password: 'api-secret' },
      })
      expect(res.json()).toEqual({ method: 'PATCH', body: '{"pause":true}' })
      expect(headers[0]).toBe(`Basic ${Buffer.from('patroni:api-secret').toString('base64')}`)
      const wrong = await apiRequest(`${url}/cluster`, {
        ca: readFileSync(other.certPath, 'utf8'),
        auth: { username: 'patroni', password: 'api-secret' },
      }).catch((e: Error) => e)
      expect(wrong).toBeInstanceOf(Error)
      expect((wrong as Error).message).toMatch(
        /^GET https:\/\/127\.0\.0\.1:\d+\/cluster: .*(unable to verify|self.signed|local issuer)/,
      )
      const slow = await apiRequest(`${url}/slow`, {
        ca: ca0,
        timeoutMs: 200,
        method: 'POST',
        auth: { username: 'patroni', password: 'api-secret' },
      }).catch((e: Error) => e)
      expect((slow as Error).message).toMatch(/POST https:.*\/slow: no answer within 200 ms/)
      for (const e of [wrong, slow]) {
        expect(inspect(e, { depth: 10 })).not.toContain('api-secret')
        expect(inspect(e, { depth: 10 })).not.toContain(Buffer.from('patroni:api-secret').toString('base64'))
      }
    } finally {
      api.closeAllConnections()
      api.close()
    }
  })
})

describe('secrets', () => {
  it('SCRAM-SHA-256 verifiers as PostgreSQL stores them: the RFC 7677 exchange checks out, no password inside', () => {
    // RFC 7677, section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 rounds.
    const salt = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64')
    const v = scramVerifier('pencil', salt)
    const m = /^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/.exec(v)
    expect(m).not.toBeNull()
    const storedKey = Buffer.from(m![1]!, 'base64')
    const serverKey = Buffer.from(m![2]!, 'base64')
    const nonce = 'rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0'
    const authMessage = `n=user,r=rOprNGfwEbeRWgbNEkqO,r=${nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=${nonce}`
    // The server's signature in the RFC comes from ServerKey...
    expect(createHmac('sha256', serverKey).update(authMessage).digest('base64')).toBe(
      '6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
    )
    // ...and the client's proof opens with StoredKey: ClientKey = proof XOR HMAC(StoredKey, AuthMessage).
    const proof = Buffer.from('dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=', 'base64')
    const signature = createHmac('sha256', storedKey).update(authMessage).digest()
    const clientKey = Buffer.from(proof.map((b, i) => b ^ signature[i]!))
    expect(createHash('sha256').update(clientKey).digest().equals(storedKey)).toBe(true)
    expect(v).toBe(scramVerifier('pencil', salt))
    expect(v).not.toBe(scramVerifier('pencil'))
    expect(v).not.toContain('pencil')
  })

  it('checkPassword: 8 to 128 printable ASCII characters, and says so without echoing it', () => {
    expect(checkPassword('Abcdefg1', 'password')).toBe('Abcdefg1')
    for (const bad of ['short', 'has space in it', 'é-accented-pw', 'x'.repeat(129)]) {
      const err = (() => {
        try {
          checkPassword(bad, 'password')
        } catch (e) {
          return e as Error
        }
      })()
      expect(err?.message).toMatch(/^password must/)
      expect(err?.message).not.toContain(bad)
    }
    expect(() => checkPassword(42, 'password')).toThrow(/must be a string/)
  })

  it('redaction: every secret of a state, RESP commands that carry one', () => {
    const state = {
      postgres: { password: 'pg-secret-1', replicationPassword: 'repl-secret', appPassword: 'app-pg-secret' },
      patroniAuth: { username: 'patroni', password: 'api-secret-1' },
      redisAuth: auth,
    } as unknown as LabState
    const secrets = stateSecrets(state)
    expect(secrets).toHaveLength(6)
    const text = `x pg-secret-1 y api-secret-1 z ${auth.adminPassword}`
    expect(redactSecrets(text, secrets)).toBe('x [redacted] y [redacted] z [redacted]')
    expect(redactSecrets('abc', ['abc'])).toBe('abc') // too short to be a password: left alone
    expect(describeCommand(['ACL', 'SETUSER', 'app', 'resetpass', '>pw-123456'])).toBe(
      'ACL SETUSER [redacted]',
    )
    expect(describeCommand(['AUTH', 'app', 'pw-123456'])).toBe('AUTH app [redacted]')
    expect(describeCommand(['CONFIG', 'SET', 'masterauth', 'pw-123456'])).toBe(
      'CONFIG SET masterauth [redacted]',
    )
    expect(describeCommand(['CLUSTER', 'FAILOVER'])).toBe('CLUSTER FAILOVER')
    expect(encodeCommand(['PING']).toString()).toBe('*1\r\n$4\r\nPING\r\n')
  })
})
