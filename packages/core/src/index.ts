export type { Breaker, BreakerOptions, BreakerState, BreakerStateChange, BreakerStats } from './breaker.js'
export { createBreaker, DEFAULT_BREAKER_OPTIONS, listBreakers } from './breaker.js'
export type {
  BreakerRejectMessage,
  BreakerStateMessage,
  ChannelName,
  ListenerErrorMessage,
  RetryMessage,
  TimeoutMessage,
} from './channels.js'
export { channelNames, channels, publish } from './channels.js'
export type { ErrorCode, ResilientErrorOptions } from './errors.js'
export { ErrorCodes, errorType, isResilientError, ResilientError, toError } from './errors.js'
export type { Disposable, Listener } from './events.js'
export { Emitter, toDisposable } from './events.js'
export type {
  BreakerCallKind,
  GaugeOptions,
  GaugePoint,
  MeterProviderLike,
  MetricsSnapshot,
  OperationRecord,
  PoolStats,
  RetryCallKind,
} from './metrics.js'
export { METER_NAME, metricNames, metrics, metricsSnapshot, resetMetricsSnapshot } from './metrics.js'
export type { NumberRule } from './options.js'
export {
  checkArray,
  checkBoolean,
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkOneOf,
  checkString,
  configError,
  describeValue,
  hideSecret,
  isPlainObject,
  optional,
  redactUrl,
} from './options.js'
export type { RetryContext, RetryEvent, RetryOptions, RetryPolicy } from './retry.js'
export { createRetry, DEFAULT_RETRY_OPTIONS, decorrelatedJitter, retry } from './retry.js'
export { SingleFlight } from './single-flight.js'
export type { SleepOptions, TimeoutOptions } from './timeout.js'
export { abortError, sleep, withTimeout } from './timeout.js'
