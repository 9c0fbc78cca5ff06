/**
 * Gray failures of the Postgres cluster: hangs without resets (a member or etcd frozen with
 * SIGSTOP), a maintenance freeze (read-only while still primary), and WAL replay held on
 * replicas (Patroni's maintenance mode), through signals and Patroni's dynamic configuration.
 */
import type { LabContext } from './context.js'
import { continueTree, stopTree } from './freeze.js'
import { apiUrl, type FrozenMember, type PostgresCluster } from './postgres.js'
import type { MemberState } from './state.js'
import { fatal, isProcessAlive, readPostmasterPid, waitFor } from './util.js'

export class PostgresGrayFailures {
  readonly #ctx: LabContext
  readonly #pg: PostgresCluster

  constructor(ctx: LabContext, pg: PostgresCluster) {
    this.#ctx = ctx
    this.#pg = pg
  }

  /**
   * Pauses WAL replay on a replica (default: every running replica) and returns their names.
   * Patroni 3 resumes paused replay on PostgreSQL 14+ in every HA loop unless the cluster is
   * in maintenance mode, so this first sets `PATCH /config {"pause": true}` and waits until
   * every running member's `GET /patroni` says `pause: true`; then `pg_wal_replay_pause()`,
   * and waits until `pg_get_wal_replay_pause_state()` is `paused`. While paused, Patroni does
   * no failover: call resumeReplay() before any chaos.
   */
  async pauseReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    const targets = memberName
      ? [this.#pg.member(memberName).name]
      : (await this.#pg.replicas()).map((r) => r.name)
    if (targets.length === 0) throw new Error('there is no running replica to pause')
    await this.#setMaintenance(true, timeoutMs)
    for (const name of targets) {
      const rows = await this.#pg.sql('select pg_is_in_recovery()', name)
      if (rows[0]?.[0] !== 't') throw new Error(`${name} is not a replica (not in recovery)`)
      await this.#pg.sql('select pg_wal_replay_pause()', name)
      await waitFor(
        `replay paused on ${name}`,
        async () => {
          const st = await this.#pg.sql('select pg_get_wal_replay_pause_state()', name)
          return st[0]?.[0] === 'paused' ? true : undefined
        },
        { timeoutMs, intervalMs: 50 },
      )
    }
    this.#ctx.log(`replay paused on ${targets.join(', ')} (maintenance mode on)`)
    return targets
  }

  /**
   * Resumes WAL replay (`pg_wal_replay_resume()`) on a member (default: every member in
   * recovery), then leaves maintenance mode (`PATCH /config {"pause": false}`) and waits until
   * every running member's `GET /patroni` no longer says `pause: true`. Returns the members
   * whose replay was resumed.
   */
  async resumeReplay(memberName?: string, opts: { timeoutMs?: number } = {}): Promise<string[]> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    const names = memberName ? [this.#pg.member(memberName).name] : this.#ctx.state.members.map((m) => m.name)
    const resumed: string[] = []
    for (const name of names) {
      try {
        const rows = await this.#pg.sql('select pg_is_in_recovery()', name)
        if (rows[0]?.[0] !== 't') continue
        await this.#pg.sql('select pg_wal_replay_resume()', name)
        resumed.push(name)
      } catch (err) {
        // A member that is down has nothing to resume; a named one must answer.
        if (memberName) throw err
      }
    }
    await this.#setMaintenance(false, timeoutMs)
    this.#ctx.log(`replay resumed on ${resumed.join(', ') || 'no member'} (maintenance mode off)`)
    return resumed
  }

  /** PATCH /config {"pause": on}, then wait until every running member reports it. */
  async #setMaintenance(on: boolean, timeoutMs: number): Promise<void> {
    await this.#patchConfig({ pause: on }, timeoutMs)
    await waitFor(
      `every running member to report pause=${on}`,
      async () => {
        for (const m of this.#ctx.state.members) {
          if (!m.pid || !isProcessAlive(m.pid)) continue
          const res = await fetch(`${apiUrl(m)}/patroni`, { signal: AbortSignal.timeout(1500) })
          const st = (await res.json()) as { pause?: boolean }
          if (Boolean(st.pause) !== on) return undefined
        }
        return true
      },
      { timeoutMs, intervalMs: 100 },
    )
  }

  /**
   * Freezes a member like a frozen VM: SIGSTOP of its Patroni (and Patroni's process group),
   * then its postmaster, then every descendant of the postmaster (backends, walsenders,
   * walreceiver, checkpointer...), listed again until no new one appears. Nothing is reset:
   * open connections stay open and new TCP connections still complete (the kernel answers the
   * handshake), but nothing answers. Patroni's leader key expires after the TTL (10 s) and a
   * replica is promoted. Resolves once every process is stopped, with their PIDs.
   */
  async freezeMember(name: string, opts: { timeoutMs?: number } = {}): Promise<FrozenMember> {
    this.#ctx.refresh()
    const member = this.#pg.member(name)
    if (this.#ctx.state.frozen?.members.includes(name)) throw new Error(`member ${name} is already frozen`)
    if (!member.pid || !isProcessAlive(member.pid)) throw new Error(`member ${name} is not running`)
    const timeoutMs = opts.timeoutMs ?? 5000
    // rejoinReplicas() reads the members' logs from here on (divergence after the failover).
    this.#pg.markLogs()
    // Patroni first: it must not see its PostgreSQL hang and act on it (restart, demote).
    const patroni = await stopTree(member.pid, this.#ctx.baseDir, { group: true, timeoutMs })
    const pm = readPostmasterPid(member.dataDir)
    const postmaster = pm && isProcessAlive(pm.pid) ? pm.pid : undefined
    const children = postmaster ? (await stopTree(postmaster, this.#ctx.baseDir, { timeoutMs })).slice(1) : []
    const frozen = this.#frozen()
    frozen.members.push(name)
    this.#ctx.save()
    this.#ctx.log(
      `froze ${name}: patroni ${patroni.join(' ')}, postmaster ${postmaster ?? '-'}, ${children.length} child(ren)`,
    )
    return {
      name,
      patroni: patroni[0]!,
      ...(postmaster ? { postmaster } : {}),
      children,
      pids: [...patroni, ...(postmaster ? [postmaster] : []), ...children],
    }
  }

  /** Freezes the current leader (freezeMember()); returns its name. */
  async freezePrimary(opts: { timeoutMs?: number } = {}): Promise<string> {
    const leader = await this.#pg.primary()
    if (!leader) throw new Error('there is no leader to freeze')
    await this.freezeMember(leader.name, opts)
    return leader.name
  }

  /**
   * SIGCONT of a frozen member in the reverse order: the postmaster's descendants, the
   * postmaster, then Patroni. The member carries on where it stopped: a statement that was
   * waiting is answered; Patroni then finds out that another member holds the leader key and
   * demotes it (Patroni 3.0.2 sometimes takes the key back instead; see FACTS.md). Resolves at
   * once (it does not wait for the member to rejoin: use rejoinReplicas() or waitForReplicas()).
   */
  async thawMember(name: string): Promise<void> {
    this.#ctx.refresh()
    const member = this.#pg.member(name)
    const pm = readPostmasterPid(member.dataDir)
    if (pm && isProcessAlive(pm.pid)) continueTree(pm.pid, this.#ctx.baseDir)
    if (member.pid) continueTree(member.pid, this.#ctx.baseDir, { group: true })
    const frozen = this.#frozen()
    frozen.members = frozen.members.filter((m) => m !== name)
    this.#ctx.save()
    this.#ctx.log(`thawed ${name}`)
  }

  /**
   * SIGSTOP of etcd, the DCS: Patroni can neither read nor renew the leader key. Without
   * `failsafeMode`, Patroni 3.0.2 demotes the leader (PostgreSQL restarted read-only) once its
   * DCS calls fail (about `retry_timeout`, 5 s, to the TTL, 10 s); with it, the leader stays
   * primary while every member answers its POST /failsafe. GET /cluster fails meanwhile.
   */
  async freezeDcs(opts: { timeoutMs?: number } = {}): Promise<void> {
    this.#ctx.refresh()
    const etcd = this.#ctx.state.etcd
    if (!etcd?.pid || !isProcessAlive(etcd.pid)) throw new Error('this lab has no running etcd')
    await stopTree(etcd.pid, this.#ctx.baseDir, { group: true, timeoutMs: opts.timeoutMs ?? 5000 })
    this.#frozen().dcs = true
    this.#ctx.save()
    this.#ctx.log(`froze etcd (pid ${etcd.pid})`)
  }

  /** SIGCONT of etcd. Patroni recovers on its next loop (a leader race when the key expired). */
  async thawDcs(): Promise<void> {
    this.#ctx.refresh()
    const etcd = this.#ctx.state.etcd
    if (etcd?.pid) continueTree(etcd.pid, this.#ctx.baseDir, { group: true })
    this.#frozen().dcs = false
    this.#ctx.save()
    this.#ctx.log('thawed etcd')
  }

  /** Names of the members frozen by freezeMember() and not thawed yet. */
  frozenMembers(): string[] {
    this.#ctx.refresh()
    return [...(this.#ctx.state.frozen?.members ?? [])]
  }

  /**
   * A maintenance freeze: the database answers every write with SQLSTATE 25006 ("cannot
   * execute ... in a read-only transaction") while it is still the primary
   * (`pg_is_in_recovery()` stays false), on connections that already exist too.
   *
   * How: `default_transaction_read_only = on` in Patroni's dynamic configuration (`PATCH
   * /config {"postgresql": {"parameters": {...}}}`). Patroni writes it into every member's
   * postgresql.conf and reloads (SIGHUP), and each existing session applies a reload before its
   * next command, so pooled connections are affected, as with a provider's server-wide flag.
   * `ALTER DATABASE ... SET` would reach new sessions only; `ALTER SYSTEM` would live on one
   * member only and be lost at a failover (Patroni also advises against it). Being the
   * cluster's setting, it outlives a failover, like the maintenance it stands for.
   * `setReadOnly(false)` removes the parameter (`null`), which existing sessions apply the same
   * way. Resolves once a fresh connection to the leader shows the new value (about 0.3 s here).
   */
  async setReadOnly(on: boolean, opts: { timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 30_000
    await this.#patchConfig(
      { postgresql: { parameters: { default_transaction_read_only: on ? 'on' : null } } },
      timeoutMs,
    )
    const want = on ? 'on' : 'off'
    const leader = await waitFor(
      `default_transaction_read_only = ${want} on the leader`,
      async () => {
        const leader = await this.#pg.primary()
        if (!leader) return undefined
        const rows = await this.#pg.sql('show default_transaction_read_only', leader.name)
        return rows[0]?.[0] === want ? leader.name : undefined
      },
      { timeoutMs, intervalMs: 50 },
    )
    this.#ctx.log(`read-only ${want} (in effect on ${leader})`)
  }

  /** PATCH /config with `body` on the first member that accepts it (frozen members skipped). */
  async #patchConfig(body: unknown, timeoutMs: number): Promise<void> {
    const text = JSON.stringify(body)
    await waitFor(
      `PATCH /config ${text}`,
      async () => {
        for (const m of this.#reachableMembers()) {
          try {
            const res = await fetch(`${apiUrl(m)}/config`, {
              method: 'PATCH',
              headers: { 'content-type': 'application/json' },
              body: text,
              signal: AbortSignal.timeout(2000),
            })
            const answer = await res.text()
            if (res.ok) return true
            if (res.status >= 400 && res.status < 500)
              throw fatal(`PATCH /config on ${m.name}: ${res.status} ${answer.trim()}`)
          } catch (err) {
            if ((err as { fatal?: unknown }).fatal === true) throw err
          }
        }
        return undefined
      },
      { timeoutMs, intervalMs: 250 },
    )
  }

  /** The members in the order to ask them: those not frozen first. */
  #reachableMembers(): MemberState[] {
    const frozen = this.#ctx.state.frozen?.members ?? []
    return [
      ...this.#ctx.state.members.filter((m) => !frozen.includes(m.name)),
      ...this.#ctx.state.members.filter((m) => frozen.includes(m.name)),
    ]
  }

  #frozen(): { members: string[]; dcs: boolean } {
    this.#ctx.state.frozen ??= { members: [], dcs: false }
    return this.#ctx.state.frozen
  }
}
