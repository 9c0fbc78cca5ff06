export type { PatroniAuthOptions, PatroniDiscoveryOptions, PatroniTlsOptions } from './patroni.js'
export { createPatroniDiscovery, DEFAULT_PATRONI_DISCOVERY_OPTIONS, mapPatroniRole } from './patroni.js'
export type { StaticConnectionOptions, StaticDiscoveryOptions, StaticHost } from './static.js'
export { createStaticDiscovery, DEFAULT_STATIC_DISCOVERY_OPTIONS } from './static.js'
export type {
  DiscoveredMember,
  Discovery,
  DiscoveryErrorEvent,
  DiscoveryResult,
  MemberRole,
} from './types.js'
