/**
 * Where a cache key lives in Redis. The keys of one entry share a `{...}` hash tag, so that
 * the Lua scripts that touch several of them are single-slot on Redis Cluster:
 * `<namespace>:{<key>}:v` (the value), `:g` (its generation), `:l` (its lease). A tag's
 * set of keys is `<namespace>:t:{<tag>}`.
 */
export interface EntryKeys {
  value: string
  generation: string
  lease: string
}

export function entryBase(namespace: string, key: string): string {
  return `${namespace}:{${key}}`
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
