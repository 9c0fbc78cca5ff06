import type { OpResult, RedisConnection } from './connection.js'
import { tagKey } from './keys.js'

/**
 * Which keys a tag covers, in Redis: `<namespace>:t:{<tag>}`, a sorted set of keys scored with
 * the latest time (Redis's clock) a fill that registered the key can still be stored. A tagged
 * load or set registers its key before anything is loaded or written, so a `deleteByTag` that
 * comes after finds it.
 *
 * `deleteByTag` reads the set, invalidates every key, then forgets only the keys that are safe
 * to forget: not registered again since it read the set (a hot key reloaded meanwhile keeps its
 * place), and with no fill registered earlier still able to land (its score has passed). A key
 * that stays is invalidated again by the next `deleteByTag` (harmless) and forgotten then.
 */
export class TagIndex {
  readonly #redis: RedisConnection
  readonly #namespace: string
  /** How long after registering a fill can still be stored, in ms (lease wait + hard loader timeout + slack). */
  readonly #boundMs: number

  constructor(redis: RedisConnection, namespace: string, boundMs: number) {
    this.#redis = redis
    this.#namespace = namespace
    this.#boundMs = boundMs
  }

  /**
   * Registers `key` under each tag, keeping each index alive at least `px` (the entry's Redis
   * lifetime) after the latest fill; true if every tag was registered. `always`: whatever the
   * breaker says (set(), an invalidation of the old value).
   */
  register(key: string, tags: readonly string[], px: number, always = false): Promise<boolean> {
    const bound = this.#boundMs
    const keep = px + bound
    return Promise.all(
      tags.map((tag) =>
        this.#redis.script('tag', 'tagAdd', [tagKey(this.#namespace, tag)], [key, bound, keep], always),
      ),
    ).then(allOk)
  }

  /** The keys registered under `tag`, with their scores (for forget()). Always attempted. */
  async members(tag: string): Promise<OpResult<{ keys: string[]; scores: string[] }>> {
    const r = await this.#redis.command<string[]>(
      'deleteByTag',
      'zrange',
      [tagKey(this.#namespace, tag), 0, -1, 'WITHSCORES'],
      true,
    )
    if (!r.ok) return r
    const reply = Array.isArray(r.value) ? r.value : []
    const keys: string[] = []
    const scores: string[] = []
    for (let i = 0; i + 1 < reply.length; i += 2) {
      keys.push(String(reply[i]))
      scores.push(String(reply[i + 1]))
    }
    return { ok: true, value: { keys, scores } }
  }

  /** Forgets the keys (read with `scores`) that are safe to forget, after they were invalidated. */
  forget(tag: string, keys: string[], scores: string[]): Promise<OpResult<unknown>> {
    const args: string[] = []
    for (let i = 0; i < keys.length; i++) args.push(keys[i]!, scores[i]!)
    return this.#redis.script('deleteByTag', 'tagTrim', [tagKey(this.#namespace, tag)], args, true)
  }
}

function allOk(rs: OpResult<unknown>[]): boolean {
  return rs.every((r) => r.ok)
}
