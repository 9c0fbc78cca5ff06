import * as diagnostics_channel from 'node:diagnostics_channel'

/**
 * Every diagnostics channel of @resilient/cache, in one place. Subscribe with
 * `diagnostics_channel.subscribe(channelNames.hit, fn)`. Messages carry the namespace and
 * the key, never a cached value, a serialized payload or a connection secret.
 */
export const channelNames = {
  /** { namespace, key, layer: 'l1' | 'l2' } for a fresh value found in a layer. */
  hit: 'resilient:cache:hit',
  /** { namespace, key } when neither layer had a fresh value. */
  miss: 'resilient:cache:miss',
  /** { namespace, key, reason: 'loader-error' | 'soft-timeout' | 'hard-timeout' } when a value past its TTL but within grace was served. */
  stale: 'resilient:cache:stale',
  /** { namespace, key, durationMs, ok } after each loader call. */
  load: 'resilient:cache:load',
  /** { namespace, operation, kind: 'timeout' | 'error', error } for a failed Redis command. */
  redisError: 'resilient:cache:redis:error',
  /** { namespace, keys, source: 'local' | 'remote' } when keys were dropped from L1. */
  invalidate: 'resilient:cache:invalidate',
  /** { namespace, key, reason } when a fill was not stored because it raced with an invalidation. */
  fillDiscarded: 'resilient:cache:fill:discarded',
} as const

export type CacheChannelName = keyof typeof channelNames

export const channels = {
  hit: diagnostics_channel.channel(channelNames.hit),
  miss: diagnostics_channel.channel(channelNames.miss),
  stale: diagnostics_channel.channel(channelNames.stale),
  load: diagnostics_channel.channel(channelNames.load),
  redisError: diagnostics_channel.channel(channelNames.redisError),
  invalidate: diagnostics_channel.channel(channelNames.invalidate),
  fillDiscarded: diagnostics_channel.channel(channelNames.fillDiscarded),
}
