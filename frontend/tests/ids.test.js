import { describe, expect, it } from 'vitest'
import { compareIds, maxId, parseId } from '../src/lib/ids.js'

describe('stream ids', () => {
  it('parses "<ms>-<seq>"', () => {
    expect(parseId('1732512345678-3')).toEqual([1732512345678, 3])
    expect(parseId('nope')).toBeNull()
    expect(parseId(null)).toBeNull()
    expect(parseId('12')).toBeNull()
  })

  it('compares numerically, not as strings', () => {
    expect(compareIds('999-0', '1000-0')).toBeLessThan(0) // "999-0" > "1000-0" as strings
    expect(compareIds('5-10', '5-9')).toBeGreaterThan(0) // "5-10" < "5-9" as strings
    expect(compareIds('5-1', '5-1')).toBe(0)
    expect(compareIds(null, '1-0')).toBeLessThan(0)
    expect(compareIds('1-0', undefined)).toBeGreaterThan(0)
  })

  it('finds the newest id', () => {
    expect(maxId('5-9', '5-10', null, '999-0')).toBe('999-0')
    expect(maxId(['2-0', '10-0'])).toBe('10-0')
    expect(maxId(null, undefined)).toBeNull()
  })
})
