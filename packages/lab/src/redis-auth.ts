/**
 * Redis credentials of a lab started with `tls: true`, for every process that speaks RESP (the
 * Redis servers, the Sentinels, the Redis Cluster nodes): how the lab itself connects (TLS with
 * its CA, the `admin` ACL user), what a client gets (the `app` user), the secrets file each
 * server starts with, and the rotation of the application's password.
 */
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { HOST, randomPassword, redisSecretsConf } from './config.js'
import type { LabContext } from './context.js'
import { type RedisClientOptions, RespError, redisCommand } from './resp.js'
import { checkPassword } from './scram.js'
import { errorMessage, isProcessAlive } from './util.js'

/** What a Redis client needs besides host and port (ioredis option names). */
export interface RedisClientAccess {
  /** The application's ACL user (`tls: true`). */
  username?: string
  password?: string
  /** The lab's CA (`tls: true`: the servers listen on TLS only). */
  tls?: { ca: string }
}

/** How the lab's own commands reach a server: TLS with the CA, AUTH as the lab's admin user. */
export function labRedisClient(ctx: LabContext): RedisClientOptions {
  const ca = ctx.ca()
  const auth = ctx.state.redisAuth
  return {
    ...(ca ? { tls: { ca } } : {}),
    ...(auth ? { auth: { username: auth.adminUser, password: auth.adminPassword } } : {}),
  }
}

/** The credentials a client gets with each Redis address (empty in a lab without TLS). */
export function clientAccess(ctx: LabContext): RedisClientAccess {
  const ca = ctx.ca()
  const auth = ctx.state.redisAuth
  return {
    ...(auth ? { username: auth.username, password: auth.password } : {}),
    ...(ca ? { tls: { ca } } : {}),
  }
}

/**
 * Writes `<dir>/secrets.conf` (mode 0600) from the current state and returns its path, or
 * undefined in a lab without Redis auth. Written before every start, so a server restarted
 * after a rotation starts with the new password.
 */
export function writeSecretsConf(ctx: LabContext, dir: string): string | undefined {
  const auth = ctx.state.redisAuth
  if (!auth) return undefined
  const path = join(dir, 'secrets.conf')
  writeFileSync(path, redisSecretsConf(auth), { mode: 0o600 })
  return path
}

/** One process of the lab that speaks RESP. */
interface RespProcess {
  name: string
  port: number
  pid?: number | undefined
}

/**
 * Changes the application user's Redis password on every running Redis server, Sentinel and
 * Redis Cluster node (`ACL SETUSER app resetpass >new`; with `keepOld`, `>new` only, so that
 * both passwords work until the next rotation), and in lab.json first, so that a server that is
 * down now starts with the new one. Connections already authenticated stay authenticated; a new
 * AUTH needs the new password. Rejects, naming the servers, when some running server could not
 * be changed (a paused one, say); the others keep the new password.
 */
export async function rotateRedisPassword(
  ctx: LabContext,
  password: string | undefined,
  opts: { keepOld?: boolean; timeoutMs?: number } = {},
): Promise<void> {
  ctx.refresh()
  const auth = ctx.state.redisAuth
  if (!auth) throw new Error("this lab's Redis has no ACL users (start it with tls: true)")
  const next = password === undefined ? randomPassword(randomBytes(24)) : checkPassword(password, 'password')
  auth.password = next
  ctx.save()
  const client = labRedisClient(ctx)
  const state = ctx.state
  const targets: RespProcess[] = [
    ...state.redis,
    ...(state.sentinel?.sentinels ?? []),
    ...(state.redisCluster?.nodes ?? []),
  ].filter((p) => p.pid !== undefined && isProcessAlive(p.pid))
  const args = ['ACL', 'SETUSER', auth.username, ...(opts.keepOld ? [] : ['resetpass']), `>${next}`]
  const failed: string[] = []
  await Promise.all(
    targets.map(async (t) => {
      try {
        const reply = await redisCommand(t.port, args, {
          host: HOST,
          timeoutMs: opts.timeoutMs ?? 2000,
          ...client,
        })
        if (reply instanceof RespError) throw new Error(reply.message)
      } catch (err) {
        failed.push(`${t.name} (${ctx.redact(errorMessage(err))})`)
      }
    }),
  )
  if (failed.length > 0)
    throw new Error(
      `rotateRedisPassword: the password of ${auth.username} was not changed on ${failed.join(', ')}`,
    )
  ctx.log(`redis: password of ${auth.username} rotated on ${targets.map((t) => t.name).join(', ')}`)
}
