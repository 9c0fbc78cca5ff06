import type { RedisClient } from './client.js'

/**
 * Lua scripts. KEYS of one call always share a hash slot: the key is wrapped in `{...}`.
 * Stored value format: `<logical expiry, epoch ms>:<payload>`.
 */
export const SCRIPTS = {
  /** KEYS: value, generation, lease. ARGV: now, lease token, lease ttl. -> [value, generation, gotLease] */
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
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then lease = 1 end
end
return {v, g, lease}`,
  },
  /** KEYS: value, generation, lease. ARGV: expected generation ('' = none), data, px, lease token ('' = none). -> 1 stored, 0 raced */
  fill: {
    numberOfKeys: 3,
    lua: `local g = redis.call('GET', KEYS[2]) or ''
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
if g ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`,
  },
  /** KEYS: value, generation. ARGV: generation ttl, channel, message. Bumps the generation so that in-flight fills lose. */
  invalidate: {
    numberOfKeys: 2,
    lua: `redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local n = redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return n`,
  },
  /** KEYS: value, generation. ARGV: data, px, generation ttl, channel, message. A write-through set: in-flight fills lose. */
  write: {
    numberOfKeys: 2,
    lua: `redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1`,
  },
  /** KEYS: lease. ARGV: token. Releases a lease this process holds. */
  release: {
    numberOfKeys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`,
  },
  /** KEYS: tag set. ARGV: member, px. Adds the key to the tag's set and keeps the set alive at least px. */
  tagAdd: {
    numberOfKeys: 1,
    lua: `redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`,
  },
} as const

export type ScriptName = keyof typeof SCRIPTS

const COMMAND_PREFIX = 'resilientCache_'

/** Defines the scripts on a client once (ioredis sends EVALSHA and falls back to EVAL). */
export function defineScripts(client: RedisClient): void {
  const c = client as unknown as Record<string, unknown>
  for (const [name, s] of Object.entries(SCRIPTS)) {
    if (typeof c[COMMAND_PREFIX + name] !== 'function') {
      client.defineCommand(COMMAND_PREFIX + name, { numberOfKeys: s.numberOfKeys, lua: s.lua })
    }
  }
}

export function runScript(
  client: RedisClient,
  name: ScriptName,
  keys: string[],
  args: (string | number)[],
): Promise<unknown> {
  const fn = (client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[
    COMMAND_PREFIX + name
  ]!
  return fn.call(client, ...keys, ...args)
}
