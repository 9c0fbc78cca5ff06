import type { Reporter, TestModule } from 'vitest/node'

/**
 * Prints one closing line that any CI can read: `Tests: N passed, N failed, N skipped`.
 * It is the last thing the test command prints.
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0
    let failed = 0
    let skipped = 0
    for (const mod of testModules) {
      for (const test of mod.children.allTests()) {
        const state = test.result().state
        if (state === 'passed') passed++
        else if (state === 'failed') failed++
        else skipped++
      }
      if (mod.state() === 'failed' && !mod.children.size) failed++
    }
    failed += unhandledErrors.length
    // Let the default reporter print its summary first.
    process.stdout.write(`\nTests: ${passed} passed, ${failed} failed, ${skipped} skipped\n`)
  }
}
