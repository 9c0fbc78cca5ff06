import { appendFileSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { logShowsDivergence } from '@resilient/lab'
import { afterAll, describe, expect, it } from 'vitest'

describe('logShowsDivergence', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lab-rejoin-test-'))
  const log = join(dir, 'patroni.log')
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('finds the divergence line written after the offset only', () => {
    const old =
      "2026-11-22 05:00:00 UTC [1] FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/5000000 on timeline 1 is not in this server's history\n"
    writeFileSync(log, old)
    const offset = statSync(log).size
    expect(logShowsDivergence(log, 0)).toContain("is not in this server's history")
    expect(logShowsDivergence(log, offset)).toBeUndefined()
    appendFileSync(
      log,
      '2026-11-22 05:01:00 INFO: no action. I am (pg0), a secondary, and following a leader (pg1)\n',
    )
    expect(logShowsDivergence(log, offset)).toBeUndefined()
    appendFileSync(
      log,
      '2026-11-22 05:01:02 UTC [7] FATAL:  highest timeline 2 of the primary is behind recovery timeline 3\n' +
        '2026-11-22 05:01:02 UTC [7] LOG:  new timeline 3 forked off current database system timeline 2 before current recovery point 0/6000000\n' +
        "2026-11-22 05:01:03 UTC [8] FATAL:  requested timeline 3 is not a child of this server's history\n",
    )
    expect(logShowsDivergence(log, offset)).toMatch(
      /new timeline 3 forked off .* before current recovery point/,
    )
  })

  it('a missing file is no divergence', () => {
    expect(logShowsDivergence(join(dir, 'nope.log'), 0)).toBeUndefined()
  })
})
