export type { PatroniAuthOptions, PatroniDiscoveryOptions, PatroniTlsOptions } from './patroni.js'
export { createPatroniDiscovery, DEFAULT_PATRONI_DISCOVERY_OPTIONS } from './patroni.js'
export type {
  DiscoveredMember,
  Discovery,
  DiscoveryErrorEvent,
  DiscoveryResult,
  MemberRole,
} from './types.js'
