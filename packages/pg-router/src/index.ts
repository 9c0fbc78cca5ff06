export { channelNames, channels } from './channels.js'
export type { CheckResult } from './check.js'
export type { Classification, ClassifyContext, ErrorClass } from './classify.js'
export { classifyError, mayRetry } from './classify.js'
export type {
  DiscoveredMember,
  Discovery,
  DiscoveryErrorEvent,
  DiscoveryResult,
  MemberRole,
  PatroniAuthOptions,
  PatroniDiscoveryOptions,
  PatroniTlsOptions,
  StaticDiscoveryOptions,
  StaticHost,
} from './discovery/index.js'
export {
  createPatroniDiscovery,
  createStaticDiscovery,
  DEFAULT_PATRONI_DISCOVERY_OPTIONS,
  DEFAULT_STATIC_DISCOVERY_OPTIONS,
} from './discovery/index.js'
export { RouterPool } from './facade.js'
export type { FailoverEvent } from './failover.js'
export type { MemberPoolStats } from './member-pool.js'
export type {
  ConnectionOptions,
  FailoverOptions,
  HostAddress,
  MonitorOptions,
  PatroniOptions,
  PgRouterOptions,
  PoolOptions,
  ReplicaOptions,
  SessionOptions,
} from './options.js'
export { DEFAULT_PG_ROUTER_OPTIONS } from './options.js'
export type {
  CommitStatus,
  MemberStats,
  PgRouter,
  QueryCallback,
  QueryText,
  RouterStats,
} from './router.js'
export { createPgRouter, TIMELINE_REGRESSION_METRIC } from './router.js'
export type {
  IsolationLevel,
  StatementOptions,
  TransactionClient,
  TransactionOptions,
  WalPosition,
  WriteOptions,
} from './session.js'
export { decodeToken, encodeToken, Session } from './session.js'
export type { PositionRejection, TokenStats } from './session-tokens.js'
export type { TimelineInfo, TimelineRegressionEvent, TimelineSwitch } from './timeline.js'
export type { MemberView, Topology } from './topology.js'
