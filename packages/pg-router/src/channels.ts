import * as diagnostics_channel from 'node:diagnostics_channel'

/**
 * Every diagnostics channel of @resilient/pg-router, in one place. Messages carry member
 * names, error classes and SQLSTATEs: never SQL text, parameter values or passwords.
 */
export const channelNames = {
  /** { member, reason, sqlState?, errorCode? } when the data path suspects the primary. */
  suspect: 'resilient:pg-router:failover:suspect',
  /** { member, previous, suspectedAt, confirmedAt } when a writer is confirmed by SQL. */
  confirmed: 'resilient:pg-router:failover:confirmed',
  /** The FailoverEvent given to onFailover listeners. */
  failover: 'resilient:pg-router:failover',
  /** { primary, replicas, source } when the set of members or their roles changed. */
  topology: 'resilient:pg-router:topology',
  /** { source, error } when a discovery endpoint (or every one) failed. */
  discoveryError: 'resilient:pg-router:discovery:error',
  /** { member, sqlState?, errorCode? } when an idle pooled connection died (it is discarded). */
  poolError: 'resilient:pg-router:pool:error',
  /** { member, errorClass, sqlState?, errorCode? } when confirming a discovered primary failed (retried). */
  confirmFailed: 'resilient:pg-router:failover:confirm-failed',
  /** { member, expected: 'primary' } when a new connection to the presumed primary was in recovery. */
  roleMismatch: 'resilient:pg-router:role-mismatch',
  /**
   * { kind: 'read' | 'write' | 'transaction', member, errorClass, attempt } before a statement is
   * retried elsewhere (a transaction: `fn` re-run with `{ retry: true }`, errorClass 'not-committed').
   */
  retry: 'resilient:pg-router:retry',
  /** { member, reason } when a replica stops getting reads (unreachable, lagging). */
  replicaExcluded: 'resilient:pg-router:replica:excluded',
  /**
   * { member, state: 'unresponsive' | 'alive', reason? } when a member stops answering its
   * liveness probe (reason: 'timeout' or the connection error's code), and when it answers again.
   */
  liveness: 'resilient:pg-router:liveness',
  /** { reason } when db.session(token) got a token it could not use (it starts empty instead). */
  badToken: 'resilient:pg-router:session:bad-token',
  /**
   * The TimelineRegressionEvent given to onTimelineRegression listeners: a confirmed primary on
   * a lower timeline than one this router had acknowledged writes on.
   */
  timelineRegression: 'resilient:pg-router:timeline:regression',
} as const

export const channels = {
  suspect: diagnostics_channel.channel(channelNames.suspect),
  confirmed: diagnostics_channel.channel(channelNames.confirmed),
  failover: diagnostics_channel.channel(channelNames.failover),
  topology: diagnostics_channel.channel(channelNames.topology),
  discoveryError: diagnostics_channel.channel(channelNames.discoveryError),
  poolError: diagnostics_channel.channel(channelNames.poolError),
  confirmFailed: diagnostics_channel.channel(channelNames.confirmFailed),
  roleMismatch: diagnostics_channel.channel(channelNames.roleMismatch),
  retry: diagnostics_channel.channel(channelNames.retry),
  replicaExcluded: diagnostics_channel.channel(channelNames.replicaExcluded),
  badToken: diagnostics_channel.channel(channelNames.badToken),
  timelineRegression: diagnostics_channel.channel(channelNames.timelineRegression),
  liveness: diagnostics_channel.channel(channelNames.liveness),
}
