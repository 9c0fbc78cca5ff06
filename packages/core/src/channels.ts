import * as diagnostics_channel from 'node:diagnostics_channel'

/**
 * Every diagnostics channel of @resilient/core, in one place. Subscribe with
 * `diagnostics_channel.subscribe(channels.breakerState.name, fn)`. Messages carry no
 * secrets and no user values.
 */
export const channelNames = {
  /** { name, from, to } when a breaker changes state. */
  breakerState: 'resilient:core:breaker:state',
  /** { attempt, delayMs, error } before a retry waits. */
  retry: 'resilient:core:retry',
} as const

export const channels = {
  breakerState: diagnostics_channel.channel(channelNames.breakerState),
  retry: diagnostics_channel.channel(channelNames.retry),
}

/** Publishes only when someone listens: free otherwise. */
export function publish(channel: diagnostics_channel.Channel, message: unknown): void {
  if (channel.hasSubscribers) channel.publish(message)
}
