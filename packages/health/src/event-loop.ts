/**
 * Watches the event loop with a timer-drift probe: a timer asks to fire every `sampleMs`;
 * when it fires late, the loop was blocked for that long. The timer never keeps the
 * process alive. Liveness fails while a delay above `maxDelayMs` was seen within `windowMs`,
 * or while the probe itself is overdue by more than `maxDelayMs` (the loop is stalling now).
 */
export interface LoopStatus {
  healthy: boolean
  /** The stall that makes it unhealthy, else the current delay of the probe timer, in ms. */
  lagMs: number
}

export interface LoopMonitor {
  status(): LoopStatus
  stop(): void
}

export function monitorEventLoop(
  options: { maxDelayMs: number; sampleMs: number; windowMs: number },
  onStall: (lagMs: number) => void,
  now: () => number = () => performance.now(),
): LoopMonitor {
  const { maxDelayMs, sampleMs, windowMs } = options
  let expected = now() + sampleMs
  let lastStallAt = Number.NEGATIVE_INFINITY
  let stallLag = 0
  let timer: NodeJS.Timeout | undefined

  const tick = () => {
    const t = now()
    const lag = Math.max(0, t - expected)
    if (lag > maxDelayMs) {
      lastStallAt = t
      stallLag = lag
      onStall(lag)
    }
    expected = t + sampleMs
    timer = setTimeout(tick, sampleMs)
    timer.unref()
  }
  timer = setTimeout(tick, sampleMs)
  timer.unref()

  return {
    status() {
      const t = now()
      const overdue = t - expected
      if (overdue > maxDelayMs) return { healthy: false, lagMs: overdue }
      if (t - lastStallAt <= windowMs) return { healthy: false, lagMs: stallLag }
      return { healthy: true, lagMs: Math.max(0, overdue) }
    },
    stop() {
      clearTimeout(timer)
    },
  }
}
