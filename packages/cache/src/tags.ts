import type { RedisConnection } from './connection.js'
import { tagKey } from './keys.js'

/**
 * Tags in Redis: `<namespace>:t:{<tag>}` is the set of keys loaded or set with the tag. A
 * tagged load registers its key before its loader runs (in parallel with its lookup), so a
 * `deleteByTag` that comes after finds it.
 */
export class TagIndex {
  readonly #redis: RedisConnection
  readonly #namespace: string

  constructor(redis: RedisConnection, namespace: string) {
    this.#redis = redis
    this.#namespace = namespace
  }

  /** Adds `key` to each tag's set, keeping the set alive at least `px`; true if every tag was registered. */
  register(key: string, tags: readonly string[], px: number, deadline: number): Promise<boolean> {
    const redis = this.#redis
    return Promise.all(
      tags.map((tag) =>
        redis.op('tag', Math.max(1, deadline - performance.now()), () =>
          redis.runScript('tagAdd', [tagKey(this.#namespace, tag)], [key, px]),
        ),
      ),
    ).then((rs) => rs.every((r) => r.ok))
  }

  /** The keys registered under `tag`, or the failure. */
  members(tag: string) {
    const key = tagKey(this.#namespace, tag)
    return this.#redis.op('smembers', this.#redis.timeoutMs, () => this.#redis.client.smembers(key))
  }

  /** Forgets `keys` under `tag` (after they were invalidated). */
  forget(tag: string, keys: string[]) {
    const key = tagKey(this.#namespace, tag)
    return this.#redis.op('srem', this.#redis.timeoutMs, () => this.#redis.client.srem(key, ...keys))
  }
}
