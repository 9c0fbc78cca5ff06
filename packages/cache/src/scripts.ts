import { createHash } from 'node:crypto'
import { Command } from 'ioredis'
import type { RedisClient } from './client.js'

/**
 * Lua scripts. KEYS of one call always share a hash slot (see keys.ts), so every script is
 * single-slot on Redis Cluster.
 *
 * A key's generation (`:g`) is `<n>` or `<n>|<floor expiry, epoch ms>|<floor>`: `<n>` changes
 * on every invalidation (`n + 1`); a fill is stored only if the generation is exactly the one
 * read before its loader started. A missing generation never matches: before loading a key
 * that has none, the cache creates one, `c<random>` (the `generation` script), so a generation
 * that an eviction removed cannot pass for "never invalidated". An invalidation always writes
 * a number (a created one reads as 0): a `c...` generation means none came since it was made.
 *
 * Stored value format: `<logical expiry, epoch ms>:<physical expiry>:<tags JSON>\n<payload>`.
 */
export const SCRIPTS = {
  /**
   * KEYS: value, generation, lease. ARGV: now, lease token, lease ttl, new generation, generation ttl.
   * -> [value, generation, gotLease]. Takes the lease if the value is not fresh; creates the
   * generation then if there is none.
   */
  lookupLease: {
    numberOfKeys: 3,
    lua: `local v = redis.call('GET', KEYS[1])
local g = redis.call('GET', KEYS[2])
local fresh = false
if v then
  local e = tonumber(string.match(v, '^(%d+):'))
  if e and e > tonumber(ARGV[1]) then fresh = true end
end
local lease = 0
if not fresh then
  if not g then
    g = ARGV[4]
    redis.call('SET', KEYS[2], g, 'PX', ARGV[5])
  end
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then lease = 1 end
end
return {v, g, lease}`,
  },
  /**
   * KEYS: value, generation, lease. ARGV: expected generation, data, px, lease token ('' = none).
   * -> 1 stored, 0 raced (the generation changed, or is gone).
   */
  fill: {
    numberOfKeys: 3,
    lua: `local g = redis.call('GET', KEYS[2])
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
if g ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`,
  },
  /**
   * KEYS: value, generation. ARGV: generation ttl, channel ('' = none), message, floor ('' =
   * keep the key's current one), floor expiry. Bumps the generation (in-flight fills lose),
   * records the floor, deletes the value, publishes. -> values deleted
   */
  invalidate: {
    numberOfKeys: 2,
    lua: `local g = redis.call('GET', KEYS[2])
local n = 0
local f = ''
if g then
  n = tonumber(string.match(g, '^(%d+)')) or 0
  f = string.match(g, '^%d+(|.*)$') or ''
end
if ARGV[4] ~= '' then f = '|' .. ARGV[5] .. '|' .. ARGV[4] end
redis.call('SET', KEYS[2], string.format('%.0f', n + 1) .. f, 'PX', ARGV[1])
local d = redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return d`,
  },
  /**
   * KEYS: value, generation. ARGV: data, px, generation ttl, channel, message. A write-through
   * set: bumps the generation (in-flight fills lose), keeps its floor, stores the value.
   */
  write: {
    numberOfKeys: 2,
    lua: `local g = redis.call('GET', KEYS[2])
local n = 0
local f = ''
if g then
  n = tonumber(string.match(g, '^(%d+)')) or 0
  f = string.match(g, '^%d+(|.*)$') or ''
end
redis.call('SET', KEYS[2], string.format('%.0f', n + 1) .. f, 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1`,
  },
  /**
   * KEYS: generation. ARGV: new generation, generation ttl. -> the key's generation: the new one
   * if it had none, else the one it has (another instance created it first, or an invalidation).
   */
  generation: {
    numberOfKeys: 1,
    lua: `local g = redis.call('GET', KEYS[1])
if g then return g end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]`,
  },
  /** KEYS: lease. ARGV: token. Releases a lease this process holds. */
  release: {
    numberOfKeys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`,
  },
  /**
   * KEYS: tag index (a sorted set). ARGV: key, bound ms, keep ms. Registers the key under the
   * tag with the latest time (server clock) a fill that registers now can still be stored:
   * now + bound (a greater score already there is kept). The index lives at least `keep ms`.
   */
  tagAdd: {
    numberOfKeys: 1,
    lua: `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1`,
  },
  /**
   * KEYS: tag index. ARGV: key1, score1, key2, score2... as deleteByTag read them, after it
   * invalidated those keys. Forgets a key only if nothing registered it since (its score is
   * unchanged) and no fill registered before can still be stored (its score has passed).
   * -> keys forgotten
   */
  tagTrim: {
    numberOfKeys: 1,
    lua: `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) and tonumber(s) < now then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n`,
  },
} as const

export type ScriptName = keyof typeof SCRIPTS

/** A generation for a key that has none: `c` and 64 random bits, never a number. */
export function newGeneration(): string {
  return `c${Math.floor(Math.random() * 2 ** 32).toString(36)}${Math.floor(Math.random() * 2 ** 32).toString(36)}`
}

const SHAS = Object.fromEntries(
  Object.entries(SCRIPTS).map(([name, s]) => [name, createHash('sha1').update(s.lua).digest('hex')]),
) as Record<ScriptName, string>

/**
 * `EVALSHA` of a script as an ioredis command (utf8 replies, the client's key prefix applied
 * to KEYS), for DeadlineGuard#send; `EVAL` with `withSource` (after a NOSCRIPT: Redis
 * restarted or failed over and lost its script cache; the script did not run).
 */
export function scriptCommand(
  client: RedisClient,
  name: ScriptName,
  keys: string[],
  args: (string | number)[],
  withSource = false,
): Command {
  const s = SCRIPTS[name]
  const options = client.options as { keyPrefix?: string }
  return new Command(
    withSource ? 'eval' : 'evalsha',
    [withSource ? s.lua : SHAS[name], s.numberOfKeys, ...keys, ...args],
    {
      replyEncoding: 'utf8',
      keyPrefix: options.keyPrefix,
    },
  )
}

/** The reply error of a script Redis does not have cached. */
export function isNoScript(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('NOSCRIPT')
}
