import { describe, expect, it } from 'vitest'
import { type CheckState, createCheck } from '../src/check.js'

/** A fake router state: no queries, just what check() reads. */
function state(over: Partial<Record<keyof CheckState, unknown>>): CheckState {
  const base: CheckState = {
    closed: () => false,
    writer: () => 'pg1',
    suspectedAt: () => null,
    discovery: () => ({ consecutiveFailures: 0, lastSuccessAt: Date.now() }),
    healthyReplicas: () => 2,
    conflict: () => null,
    failoverTimeoutMs: () => 30_000,
  }
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) out[k] = () => v
  return out as unknown as CheckState
}

describe('db.check() during a failover', () => {
  it('a failover younger than failover.timeoutMs with replicas serving reads: warn, writes held', async () => {
    const r = await createCheck(state({ writer: null, suspectedAt: performance.now() - 4_000 }))()
    expect(r.status).toBe('warn')
    expect(r.output).toMatch(/^failover in progress: writes held \(\d+ ms\); 2 replica\(s\) serving reads$/)
    expect(r.details).toMatchObject({ primary: null, replicasServingReads: 2 })
    expect(r.details?.failoverMs).toBeGreaterThanOrEqual(4_000)
  })

  it('no replica serving reads during the failover: fail', async () => {
    const r = await createCheck(
      state({ writer: null, suspectedAt: performance.now() - 1_000, healthyReplicas: 0 }),
    )()
    expect(r.status).toBe('fail')
    expect(r.output).toContain('no replica serving reads')
  })

  it('a failover older than failover.timeoutMs (writes now fail): fail, even with replicas', async () => {
    const r = await createCheck(
      state({ writer: null, suspectedAt: performance.now() - 6_000, failoverTimeoutMs: 5_000 }),
    )()
    expect(r.status).toBe('fail')
    expect(r.output).toContain('longer than failover.timeoutMs')
  })

  it('no primary confirmed yet (startup, nothing suspected): fail; a confirmed primary: pass', async () => {
    expect(await createCheck(state({ writer: null }))()).toMatchObject({
      status: 'fail',
      output: 'no primary confirmed yet',
    })
    expect(await createCheck(state({}))()).toMatchObject({ status: 'pass', componentId: 'pg1' })
  })

  it('closed and split brain stay fail whatever the replicas', async () => {
    expect((await createCheck(state({ closed: true }))()).status).toBe('fail')
    expect(
      (await createCheck(state({ writer: null, suspectedAt: performance.now(), conflict: ['a', 'b'] }))())
        .status,
    ).toBe('fail')
  })
})
