import * as diagnostics_channel from 'node:diagnostics_channel'

/**
 * Every diagnostics channel of @resilient/core, in one place. Subscribe with
 * `diagnostics_channel.subscribe(channelNames.breakerState, fn)`. Messages carry names,
 * numbers and error objects of our own making or the caller's; never option values,
 * connection strings or query values. Publishing costs nothing while nobody subscribes.
 */
export const channelNames = {
  /** `{ name, from, to }` when a breaker changes state. */
  breakerState: 'resilient:core:breaker:state',
  /** `{ name }` each time an open (or busy half-open) breaker rejects a call with E_CIRCUIT_OPEN. */
  breakerReject: 'resilient:core:breaker:reject',
  /** `{ name, attempt, delayMs, error }` before a retry waits. */
  retry: 'resilient:core:retry',
  /** `{ operation, timeoutMs }` when `withTimeout` gives up on a call (and aborts its signal). */
  timeout: 'resilient:core:timeout',
  /** `{ message, error }` when a listener of a typed event (`onX`) threw; the emitter carried on. */
  listenerError: 'resilient:core:listener-error',
} as const

export type ChannelName = (typeof channelNames)[keyof typeof channelNames]

export interface BreakerStateMessage {
  name: string
  from: 'closed' | 'open' | 'half-open'
  to: 'closed' | 'open' | 'half-open'
}
export interface BreakerRejectMessage {
  name: string
}
export interface RetryMessage {
  name: string
  attempt: number
  delayMs: number
  error: unknown
}
export interface TimeoutMessage {
  operation: string
  timeoutMs: number
}
export interface ListenerErrorMessage {
  error: unknown
}

export const channels = {
  breakerState: diagnostics_channel.channel(channelNames.breakerState),
  breakerReject: diagnostics_channel.channel(channelNames.breakerReject),
  retry: diagnostics_channel.channel(channelNames.retry),
  timeout: diagnostics_channel.channel(channelNames.timeout),
  listenerError: diagnostics_channel.channel(channelNames.listenerError),
}

/** Publishes only when someone listens: free otherwise. */
export function publish(channel: diagnostics_channel.Channel, message: unknown): void {
  if (channel.hasSubscribers) channel.publish(message)
}
