export type { VerboseMode } from './access.js'
export type { AdminListener, AdminOptions } from './admin.js'
export { ADMIN_PATHS, createAdminHandler, DEFAULT_ADMIN_OPTIONS } from './admin.js'
export { channelNames, channels } from './channels.js'
export type { CheckChange, CheckOutcome } from './checks.js'
export type { ClosableServer, DrainResult } from './drain.js'
export type {
  Health,
  HealthState,
  NodeHandler,
  ProbeOptions,
  ProbeResponse,
  ResourceReport,
  ShutdownOptions,
  ShutdownPhase,
  ShutdownPhaseEvent,
  ShutdownReport,
  StatusChange,
} from './health.js'
export { createHealth } from './health.js'
export type { MetricsOptions, MetricsRegistry } from './metrics.js'
export { createMetricsHandler, DEFAULT_METRICS_OPTIONS } from './metrics.js'
export type { CheckDefinition, EventLoopOptions, HealthOptions, SignalOptions } from './options.js'
export { DEFAULT_EVENT_LOOP_OPTIONS, DEFAULT_HEALTH_OPTIONS, DEFAULT_SIGNAL_OPTIONS } from './options.js'
export type { BreakerEntry, CheckEntry, HealthReport, PublicCheckEntry, PublicReport } from './report.js'
export type { CheckContext, CheckFunction, CheckResult, CheckReturn, CheckStatus } from './result.js'
export type { ShedChange, ShedOptions, ShedReason, ShedStats } from './shed.js'
export { DEFAULT_SHED_OPTIONS } from './shed.js'
