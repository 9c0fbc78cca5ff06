/**
 * SCRAM-SHA-256 password verifiers as PostgreSQL stores them (RFC 5802 / 7677), computed here so
 * that `ALTER ROLE ... PASSWORD` sends the verifier, not the password: the plain password never
 * reaches the server, its logs or pg_stat_activity (what psql's \password does).
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto'

/** PostgreSQL's default `scram_iterations`. */
export const SCRAM_ITERATIONS = 4096

/**
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password`. PostgreSQL runs
 * SASLprep on the password first, which leaves printable ASCII unchanged: checkPassword() keeps
 * passwords to that.
 */
export function scramVerifier(
  password: string,
  salt: Buffer = randomBytes(16),
  iterations = SCRAM_ITERATIONS,
): string {
  const salted = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, 32, 'sha256')
  const clientKey = createHmac('sha256', salted).update('Client Key').digest()
  const storedKey = createHash('sha256').update(clientKey).digest()
  const serverKey = createHmac('sha256', salted).update('Server Key').digest()
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`
}

/**
 * Throws unless `password` is 8 to 128 printable ASCII characters without spaces: what every
 * server of the lab takes as is (SASLprep, Redis config files, URLs once encoded). The message
 * never shows the password.
 */
export function checkPassword(password: unknown, field: string): string {
  if (typeof password !== 'string') throw new TypeError(`${field} must be a string`)
  if (password.length < 8 || password.length > 128)
    throw new RangeError(`${field} must be 8 to 128 characters long (got ${password.length})`)
  if (!/^[\x21-\x7e]+$/.test(password))
    throw new RangeError(`${field} must be printable ASCII without spaces`)
  return password
}
