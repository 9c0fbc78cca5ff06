/**
 * The application role of the Postgres cluster (`app`): created at boot with the password in the
 * state, and rotated on demand. What goes to the server is the SCRAM verifier, never the password.
 */
import { randomBytes } from 'node:crypto'
import { randomPassword } from './config.js'
import type { LabContext } from './context.js'
import type { PostgresCluster } from './postgres.js'
import { checkPassword, scramVerifier } from './scram.js'
import { waitFor } from './util.js'

export class PostgresAppRole {
  readonly #ctx: LabContext
  readonly #pg: PostgresCluster

  constructor(ctx: LabContext, pg: PostgresCluster) {
    this.#ctx = ctx
    this.#pg = pg
  }

  /**
   * Creates the application role (`app`) with its password from the state, or sets it again:
   * LOGIN, member of pg_monitor (pg_stat_replication and friends), CREATE on schema public.
   * Resolves once every streaming replica has it.
   */
  async create(timeoutMs: number): Promise<void> {
    const p = this.#ctx.state.postgres
    if (!p.appUser || !p.appPassword) return
    const role = quoteIdent(p.appUser)
    await this.#setAppPassword(
      p.appUser,
      p.appPassword,
      `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${quoteLiteral(p.appUser)}) THEN CREATE ROLE ${role} LOGIN; END IF; END $$;\nGRANT pg_monitor TO ${role};\nGRANT CREATE ON SCHEMA public TO ${role};`,
      timeoutMs,
    )
  }

  /**
   * Changes the application role's password (`ALTER ROLE app PASSWORD`, on the leader) to
   * `password` (default: a new random one), and updates `postgresApp` and lab.json. Sessions
   * already open stay open (PostgreSQL checks a password only at login); new logins need the new
   * one. What is sent is the SCRAM verifier, never the password, with statement logging off for
   * that session. Resolves once every streaming replica whose replay is not paused has it too
   * (a client logging in to a replica right after gets the same answer).
   */
  async rotate(password: string | undefined, opts: { timeoutMs?: number } = {}): Promise<void> {
    this.#ctx.refresh()
    const p = this.#ctx.state.postgres
    if (!p.appUser) throw new Error('this lab has no application role (it was started before it existed)')
    const next =
      password === undefined ? randomPassword(randomBytes(24)) : checkPassword(password, 'password')
    await this.#setAppPassword(p.appUser, next, '', opts.timeoutMs ?? this.#ctx.readyTimeoutMs)
    this.#ctx.log(`postgres: password of ${p.appUser} rotated`)
  }

  /**
   * Runs `before` then `ALTER ROLE user LOGIN PASSWORD '<verifier>'` in one transaction on the
   * leader (statements through stdin, statement logging off), records the password in the
   * state, and waits until the streaming replicas (replay not paused) show the same verifier.
   */
  async #setAppPassword(user: string, password: string, before: string, timeoutMs: number): Promise<void> {
    const verifier = scramVerifier(password)
    const leader = await this.#pg.primary()
    if (!leader) throw new Error('there is no leader to change a password on')
    await this.#pg.sql(
      [
        "SET LOCAL log_statement = 'none';",
        "SET LOCAL log_min_error_statement = 'panic';",
        'SET LOCAL log_min_duration_statement = -1;',
        before,
        `ALTER ROLE ${quoteIdent(user)} LOGIN PASSWORD ${quoteLiteral(verifier)};`,
      ].join('\n'),
      leader.name,
      { stdin: true },
    )
    this.#ctx.refresh()
    this.#ctx.state.postgres.appPassword = password
    this.#ctx.save()
    const replicas = await this.#pg
      .sql("select application_name from pg_stat_replication where state = 'streaming'", leader.name)
      .catch(() => [] as string[][])
    for (const [name] of replicas) {
      if (!name || !this.#ctx.state.members.some((m) => m.name === name)) continue
      await waitFor(
        `${name} to replay the new password of ${user}`,
        async () => {
          const rows = await this.#pg.sql(
            `select coalesce(rolpassword, ''), pg_is_wal_replay_paused() from pg_authid where rolname = ${quoteLiteral(user)}`,
            name,
          )
          return rows[0]?.[0] === verifier || rows[0]?.[1] === 't' ? true : undefined
        },
        { timeoutMs, intervalMs: 50 },
      )
    }
  }
}

/** A SQL identifier in double quotes. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

/** A SQL string literal (standard_conforming_strings is on). */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`
}
