export { createCache } from './cache.js'
export type { CacheChannelName } from './channels.js'
export { channelNames, channels } from './channels.js'
export type {
  CacheOptions,
  CacheRedisOptions,
  L1Options,
  LeaseOptions,
  LoaderTimeoutOptions,
} from './options.js'
export { DEFAULT_CACHE_OPTIONS } from './options.js'
export type { Serializer } from './serializer.js'
export { jsonSerializer } from './serializer.js'
export type {
  Cache,
  CacheStats,
  CheckResult,
  FillDiscardedEvent,
  GetOrLoadOptions,
  InvalidateOptions,
  InvalidationEvent,
  LoadContext,
  Loader,
  LoaderErrorEvent,
  RedisErrorEvent,
  SetOptions,
  StaleEvent,
  StaleReason,
} from './types.js'
