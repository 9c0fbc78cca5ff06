/**
 * TLS material for a lab started with `tls: true`: a throw-away certificate authority and one
 * server certificate it signs (SANs 127.0.0.1 and localhost), made with Debian's `openssl`
 * binary. PostgreSQL, Patroni's REST API, Redis, the Sentinels and the Redis Cluster nodes all
 * present that certificate; clients trust the CA (`lab.tls.ca` / `lab.tls.caPath`).
 *
 * The private keys stay in files (mode 0600) that the servers read: the lab never reads a key
 * into memory, so none can end up in its state, its errors, its logs or util.inspect.
 *
 * Also exported for tests that need bad certificates (a second CA, an expired certificate,
 * a certificate for another host name): createCertificateAuthority() and issueCertificate().
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/** Where a lab's TLS files are (all paths; no key material). */
export interface TlsState {
  dir: string
  /** The CA certificate (PEM) clients trust. */
  caPath: string
  /** The CA's private key (mode 0600). */
  caKeyPath: string
  /** The servers' certificate (PEM), signed by the CA. */
  certPath: string
  /** The servers' private key (mode 0600, owned by the user PostgreSQL runs as). */
  keyPath: string
}

/** A certificate authority made by createCertificateAuthority(). */
export interface CertificateAuthority {
  dir: string
  certPath: string
  keyPath: string
}

/** A certificate made by issueCertificate(). */
export interface IssuedCertificate {
  certPath: string
  keyPath: string
}

export interface IssueOptions {
  /** File name stem: `<dir>/<name>.crt` and `<dir>/<name>.key`. Default 'server'. */
  name?: string
  /** Subject alternative names: IP addresses and DNS names. Default ['127.0.0.1', 'localhost']. */
  hosts?: string[]
  /** Start of validity. Default one hour ago (room for clock skew). */
  notBefore?: Date
  /** End of validity. Default 825 days from now. A date in the past makes an expired certificate. */
  notAfter?: Date
}

/** Runs openssl; rejects with its stderr (openssl never prints key material there). */
function openssl(args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'openssl',
      args,
      { cwd, timeout: 30_000, env: { PATH: process.env.PATH ?? '' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`openssl ${args[0]} failed: ${stderr.trim() || err.message}`))
        else resolve(stdout)
      },
    )
  })
}

/** YYYYMMDDHHMMSSZ, the form `openssl ca -startdate/-enddate` takes. */
export function opensslDate(d: Date): string {
  return `${d.toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

/**
 * A new self-signed CA in `dir` (created if missing): `ca.crt` (0644) and `ca.key` (0600), an
 * EC P-256 key, valid 10 years, with the bookkeeping `openssl ca` needs to sign certificates.
 */
export async function createCertificateAuthority(
  dir: string,
  opts: { commonName?: string } = {},
): Promise<CertificateAuthority> {
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  const certPath = join(dir, 'ca.crt')
  const keyPath = join(dir, 'ca.key')
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      ...EC,
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '3650',
      '-subj',
      `/CN=${opts.commonName ?? 'resilient-lab CA'}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  )
  chmodSync(keyPath, 0o600)
  chmodSync(certPath, 0o644)
  const db = join(dir, 'ca-db')
  mkdirSync(db, { recursive: true, mode: 0o700 })
  writeFileSync(join(db, 'index.txt'), '')
  writeFileSync(
    join(dir, 'ca.cnf'),
    [
      '[ca]',
      'default_ca = lab',
      '[lab]',
      `database = ${join(db, 'index.txt')}`,
      `new_certs_dir = ${db}`,
      `serial = ${join(db, 'serial')}`,
      'default_md = sha256',
      'policy = any',
      'copy_extensions = none',
      'unique_subject = no',
      '[any]',
      'commonName = supplied',
      '',
    ].join('\n'),
  )
  return { dir, certPath, keyPath }
}

/** The subjectAltName value for a list of hosts: IP:... for addresses, DNS:... for names. */
export function subjectAltName(hosts: string[]): string {
  return hosts.map((h) => (/^[\d.]+$/.test(h) || h.includes(':') ? `IP:${h}` : `DNS:${h}`)).join(',')
}

/**
 * A certificate signed by `ca` in `dir`: `<name>.crt` (0644) and `<name>.key` (0600), usable by
 * servers and as a client certificate (serverAuth, clientAuth). `notAfter` in the past makes an
 * expired one; `hosts` without 127.0.0.1 one that fails host-name checks on the lab's address.
 */
export async function issueCertificate(
  ca: CertificateAuthority,
  dir: string,
  opts: IssueOptions = {},
): Promise<IssuedCertificate> {
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  const name = opts.name ?? 'server'
  const hosts = opts.hosts ?? ['127.0.0.1', 'localhost']
  if (hosts.length === 0) throw new Error('issueCertificate: hosts must name at least one host')
  const certPath = join(dir, `${name}.crt`)
  const keyPath = join(dir, `${name}.key`)
  const csrPath = join(dir, `${name}.csr`)
  const extPath = join(dir, `${name}.ext`)
  const now = Date.now()
  const notBefore = opts.notBefore ?? new Date(now - 3600_000)
  const notAfter = opts.notAfter ?? new Date(now + 825 * 86_400_000)
  writeFileSync(
    extPath,
    [
      `subjectAltName=${subjectAltName(hosts)}`,
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      '',
    ].join('\n'),
  )
  await openssl(['req', '-new', ...EC, '-keyout', keyPath, '-out', csrPath, '-subj', `/CN=${hosts[0]}`], dir)
  chmodSync(keyPath, 0o600)
  // A random serial for each certificate: two CAs of two labs never issue the same one.
  writeFileSync(join(ca.dir, 'ca-db', 'serial'), `${randomHex(8)}\n`)
  await openssl(
    [
      'ca',
      '-batch',
      '-notext',
      '-config',
      join(ca.dir, 'ca.cnf'),
      '-cert',
      ca.certPath,
      '-keyfile',
      ca.keyPath,
      '-in',
      csrPath,
      '-out',
      certPath,
      '-startdate',
      opensslDate(notBefore),
      '-enddate',
      opensslDate(notAfter),
      '-extfile',
      extPath,
    ],
    dir,
  )
  chmodSync(certPath, 0o644)
  return { certPath, keyPath }
}

function randomHex(bytes: number): string {
  const buf = randomBytes(bytes)
  // A serial must be positive: clear the top bit.
  buf[0] = buf[0]! & 0x7f
  return buf.toString('hex').toUpperCase()
}

/**
 * A lab's TLS material in `<baseDir>/tls`: the CA and the servers' certificate. `ownKey` hands
 * the server key to the user PostgreSQL runs as (PostgreSQL refuses a key it does not own or
 * that others can read).
 */
export async function createLabTls(
  baseDir: string,
  scope: string,
  ownKey: (path: string) => void,
): Promise<TlsState> {
  const dir = join(baseDir, 'tls')
  const ca = await createCertificateAuthority(dir, { commonName: `resilient-lab CA ${scope}` })
  const server = await issueCertificate(ca, dir, { name: 'server' })
  ownKey(server.keyPath)
  return {
    dir,
    caPath: ca.certPath,
    caKeyPath: ca.keyPath,
    certPath: server.certPath,
    keyPath: server.keyPath,
  }
}

/** The CA certificate (PEM) of a lab's TLS material. */
export function readCa(tls: TlsState): string {
  return readFileSync(tls.caPath, 'utf8')
}
