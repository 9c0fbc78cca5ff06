/** Small helpers shared by the cache's tests. */

export async function until(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
  intervalMs = 10,
): Promise<number> {
  const start = performance.now()
  while (!(await cond())) {
    if (performance.now() - start > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(intervalMs)
  }
  return performance.now() - start
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

export function deferred<T>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

/** Blocks the event loop for `ms` (a long synchronous task, a GC pause, a starved process). */
export function blockFor(ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end);
}

/**
 * Runs `fn` next to a bare timer of `ms` started at the same moment, and returns how much
 * longer `fn` took than that timer did (negative: it finished sooner). On a loaded machine a
 * timer of 100 ms can take 140; what a bound like "at most redisTimeoutMs + 20 ms" means is
 * "at most 20 ms past what a timer of redisTimeoutMs takes here and now".
 */
export async function pastTimer(ms: number, fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  let timerMs = 0
  let timer: NodeJS.Timeout | undefined
  const fired = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      timerMs = performance.now() - t0
      resolve()
    }, ms)
  })
  await fn()
  const fnMs = performance.now() - t0
  if (fnMs < ms) {
    clearTimeout(timer) // sooner than the timer could fire: nothing to compare with
    return fnMs - ms
  }
  await fired
  return fnMs - timerMs
}
