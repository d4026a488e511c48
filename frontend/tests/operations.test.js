import { describe, expect, it } from 'vitest'
import { canCancel, emptyOperations, operationList, operationsReducer } from '../src/lib/operations.js'
import { note, published } from './helpers.js'

const T = 1_700_000_000_000
const op = (extra = {}) => ({
  id: 'op1', user: 'alice', kind: 'count', params: { steps: 5 }, state: 'queued', step: 0, steps: 5,
  progress: 0, message: 'queued', attempts: 0, created: T, updated: T, error: null, ...extra,
})
const n = (i, extra = {}) => note(`${T + i}-0`, { ts: T + i, ...extra })

describe('operations reducer', () => {
  it('creates an operation from a notification (started elsewhere)', () => {
    const s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(1, { operation: 'x', kind: 'sleep', type: 'operation.queued', state: 'queued', step: 0, progress: 0 }) })
    expect(s.byId.x).toMatchObject({ id: 'x', kind: 'sleep', state: 'queued', step: 0, steps: 5 })
  })

  it('follows progress, then the final state', () => {
    let s = operationsReducer(emptyOperations(), { type: 'snapshot', operations: [op()] })
    for (let i = 1; i <= 5; i++) {
      s = operationsReducer(s, { type: 'notification', notification: n(i, { step: i, progress: i / 5, message: `step ${i}` }) })
      expect(s.byId.op1).toMatchObject({ state: 'running', step: i, message: `step ${i}` })
    }
    s = operationsReducer(s, { type: 'notification', notification: n(6, { type: 'operation.succeeded', state: 'succeeded', step: 5, progress: 1, message: 'done' }) })
    expect(s.byId.op1).toMatchObject({ state: 'succeeded', progress: 1, message: 'done' })
    expect(canCancel(s.byId.op1)).toBe(false)
  })

  it('ignores a notification already applied or older (by stream id)', () => {
    let s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(3, { step: 3 }) })
    const before = s
    s = operationsReducer(s, { type: 'notification', notification: n(2, { step: 2 }) })
    s = operationsReducer(s, { type: 'notification', notification: n(3, { step: 3 }) })
    expect(s).toBe(before)
  })

  it('applies a batch in id order whatever order it came in', () => {
    const s = operationsReducer(emptyOperations(), { type: 'notification', notifications: [n(3, { step: 3 }), n(1, { step: 1 }), n(2, { step: 2 })] })
    expect(s.byId.op1.step).toBe(3)
  })

  it('never leaves a terminal state', () => {
    let s = operationsReducer(emptyOperations(), { type: 'snapshot', operations: [op({ state: 'cancelled', updated: T + 10 })] })
    s = operationsReducer(s, { type: 'notification', notification: n(20, { step: 4, state: 'running' }) })
    expect(s.byId.op1.state).toBe('cancelled')
    s = operationsReducer(s, { type: 'snapshot', operations: [op({ state: 'running', updated: T + 30 })] })
    expect(s.byId.op1.state).toBe('cancelled')
  })

  it('a stale snapshot does not undo newer progress', () => {
    let s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(5, { step: 4 }) })
    s = operationsReducer(s, { type: 'snapshot', operations: [op({ state: 'running', step: 2, updated: T + 2 })] })
    expect(s.byId.op1.step).toBe(4)
  })

  it('replayed notifications older than the hello snapshot do not rewind it', () => {
    let s = operationsReducer(emptyOperations(), { type: 'snapshot', operations: [op({ state: 'running', step: 4, updated: T + 40 })] })
    s = operationsReducer(s, { type: 'notification', notification: n(20, { step: 2 }) })
    expect(s.byId.op1.step).toBe(4)
    s = operationsReducer(s, { type: 'notification', notification: n(50, { step: 5 }) })
    expect(s.byId.op1.step).toBe(5)
  })

  it('shows restarted, then running again', () => {
    let s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(1, { step: 2 }) })
    s = operationsReducer(s, { type: 'notification', notification: n(2, { type: 'operation.restarted', state: 'restarted', step: 0, progress: 0 }) })
    expect(s.byId.op1).toMatchObject({ state: 'restarted', step: 0 })
    s = operationsReducer(s, { type: 'notification', notification: n(3, { step: 1 }) })
    expect(s.byId.op1.state).toBe('running')
  })

  it('derives the state from the type when state is absent, and keeps the failure message', () => {
    const s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(1, { type: 'operation.failed', state: undefined, message: 'failed at step 3' }) })
    expect(s.byId.op1).toMatchObject({ state: 'failed', error: 'failed at step 3' })
  })

  it('upserts the answer to start/cancel and lists newest first', () => {
    let s = operationsReducer(emptyOperations(), { type: 'upsert', operation: op({ id: 'a', created: T }) })
    s = operationsReducer(s, { type: 'upsert', operation: op({ id: 'b', created: T + 5 }) })
    expect(operationList(s).map((o) => o.id)).toEqual(['b', 'a'])
    s = operationsReducer(s, { type: 'upsert', operation: op({ id: 'a', state: 'cancelled', updated: T + 9 }) })
    expect(s.byId.a.state).toBe('cancelled')
  })

  it('clamps progress to 0..1 and ignores non-operation notifications', () => {
    let s = operationsReducer(emptyOperations(), { type: 'notification', notification: n(1, { progress: 7 }) })
    expect(s.byId.op1.progress).toBe(1)
    const before = s
    s = operationsReducer(s, { type: 'notification', notification: n(2, { type: 'system.hello', operation: 'zz' }) })
    expect(s).toBe(before)
  })

  it('never makes an operation of a published notification (operation "")', () => {
    let s = operationsReducer(emptyOperations(), { type: 'snapshot', operations: [op()] })
    const before = s
    s = operationsReducer(s, { type: 'notification', notifications: [published(`${T + 1}-0`), published(`${T + 2}-0`, { type: 'notification' })] })
    expect(s).toBe(before)
    expect(Object.keys(s.byId)).toEqual(['op1'])
  })

  it('ignores an operation notification that names no operation', () => {
    const s = operationsReducer(emptyOperations(), {
      type: 'notification',
      notifications: [n(1, { operation: '' }), n(2, { operation: null }), n(3, { operation: undefined, type: 'operation.succeeded' })],
    })
    expect(s.byId).toEqual({})
  })
})
