import * as diagnostics_channel from 'node:diagnostics_channel'

/**
 * Every diagnostics channel of @resilient/health, in one place. Subscribe with
 * `diagnostics_channel.subscribe(channelNames.check, fn)`. Messages carry no secrets:
 * check outputs are the messages our packages already redact, never stacks.
 */
export const channelNames = {
  /** { name, critical, status, previous, durationMs, output? } after every check run. */
  check: 'resilient:health:check',
  /** { from, to } when the readiness status (pass | warn | fail) changes. */
  status: 'resilient:health:status',
  /** { phase, reason, elapsedMs } at each step of a shutdown. */
  shutdown: 'resilient:health:shutdown',
  /** { lagMs, maxDelayMs } when an event-loop delay past the liveness limit is seen. */
  eventLoopStall: 'resilient:health:event-loop-stall',
  /** { shedding, reason, value, limit } when load shedding starts or stops (the sampled state). */
  shed: 'resilient:health:shed',
} as const

export const channels = {
  check: diagnostics_channel.channel(channelNames.check),
  status: diagnostics_channel.channel(channelNames.status),
  shutdown: diagnostics_channel.channel(channelNames.shutdown),
  eventLoopStall: diagnostics_channel.channel(channelNames.eventLoopStall),
  shed: diagnostics_channel.channel(channelNames.shed),
}

export function publish(channel: diagnostics_channel.Channel, message: unknown): void {
  if (channel.hasSubscribers) channel.publish(message)
}
