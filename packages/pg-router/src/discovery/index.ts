export type {
  DiscoveredMember,
  Discovery,
  DiscoveryErrorEvent,
  DiscoveryResult,
  MemberRole,
} from './types.js'
