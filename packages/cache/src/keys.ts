/**
 * Where a cache key lives in Redis. The keys of one entry share a `{...}` hash tag, so that
 * the Lua scripts that touch several of them are single-slot on Redis Cluster:
 * `<namespace>:{<key>}:v` (the value), `:g` (its generation), `:l` (its lease).
 *
 * Redis hashes the text between the first `{` and the first `}` after it. A key with a `}`
 * would cut that short (a key starting with `}` gives an empty tag, and Redis then hashes the
 * whole name: `:v`, `:g` and `:l` land in different slots and every script fails with
 * CROSSSLOT). So a key containing `}` lives at `<namespace>:{~<digest>}:<key>:v` instead: the
 * hash tag is a digest of the key, the key itself follows in full (no two keys share a name).
 * A key without `}` keeps the plain layout (the one earlier versions wrote).
 *
 * A tag's index is `<namespace>:t:{<tag>}` (one key per script: any tag is safe).
 */
export interface EntryKeys {
  value: string
  generation: string
  lease: string
}

/** FNV-1a over UTF-16 code units, 32 bits, as 8 hex digits: a hash tag, not a secret. */
function digest(s: string): string {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0).toString(16).padStart(8, '0')
}

export function entryBase(namespace: string, key: string): string {
  return key.includes('}') ? `${namespace}:{~${digest(key)}}:${key}` : `${namespace}:{${key}}`
}

export function entryKeys(namespace: string, key: string): EntryKeys {
  const base = entryBase(namespace, key)
  return { value: `${base}:v`, generation: `${base}:g`, lease: `${base}:l` }
}

export function tagKey(namespace: string, tag: string): string {
  return `${namespace}:t:{${tag}}`
}

/** The pub/sub channel that carries invalidations between the instances of a namespace. */
export function invalidationChannel(namespace: string): string {
  return `${namespace}:__invalidate`
}
