import { describe, expect, it } from 'vitest'
import { buildParams, initialValues, inputStep } from '../src/lib/params.js'
import { fieldKey } from '../src/lib/format.js'

const kind = {
  name: 'count',
  params: {
    steps: { type: 'int', min: 1, max: 100, default: 5, optional: false },
    step_seconds: { type: 'float', min: 0, max: 10, default: 0.5, optional: false },
    fail_at: { type: 'int', min: 1, max: 100, optional: true },
  },
}

describe('operation parameters', () => {
  it('starts from the defaults, optional ones empty', () => {
    expect(initialValues(kind)).toEqual({ steps: '5', step_seconds: '0.5', fail_at: '' })
  })
  it('sends numbers, omits empty optional values, passes the rest to the server', () => {
    expect(buildParams(kind, { steps: '3', step_seconds: '0.25', fail_at: '' })).toEqual({ steps: 3, step_seconds: 0.25 })
    expect(buildParams(kind, { steps: '2.5', step_seconds: 'x', fail_at: '2' })).toEqual({ steps: 2.5, step_seconds: 'x', fail_at: 2 })
  })
  it('maps server fields to form fields', () => {
    expect(fieldKey('params.steps')).toBe('steps')
    expect(fieldKey('kind')).toBe('kind')
    expect(fieldKey(undefined)).toBeNull()
    expect(inputStep(kind.params.steps)).toBe(1)
    expect(inputStep(kind.params.step_seconds)).toBe('any')
  })
})
