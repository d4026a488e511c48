import { describe, expect, it } from 'vitest'
import {
  addNotifications,
  applyRead,
  emptyInbox,
  newestId,
  setBaseline,
  unreadCount,
  unreadIds,
} from '../src/lib/inbox.js'
import { note } from './helpers.js'

const ids = (s) => s.items.map((n) => n.id)

describe('inbox dedupe and ordering', () => {
  it('keeps newest first by stream id, comparing ids as numbers', () => {
    let s = emptyInbox()
    s = addNotifications(s, [note('999-0'), note('1000-0'), note('1000-10'), note('1000-9')])
    expect(ids(s)).toEqual(['1000-10', '1000-9', '1000-0', '999-0'])
    expect(s.lastId).toBe('1000-10')
  })

  it('drops duplicates within a batch and across batches', () => {
    let s = emptyInbox()
    s = addNotifications(s, [note('1-0'), note('2-0'), note('2-0')])
    s = addNotifications(s, [note('2-0'), note('3-0'), note('1-0')])
    expect(ids(s)).toEqual(['3-0', '2-0', '1-0'])
  })

  it('returns the same object when nothing is new (no re-render)', () => {
    const s = addNotifications(emptyInbox(), [note('1-0')])
    expect(addNotifications(s, [note('1-0')])).toBe(s)
    expect(addNotifications(s, [])).toBe(s)
    expect(addNotifications(s, [{ id: 'garbage' }, null])).toBe(s)
  })

  it('merges an older page (REST load after live events) in order', () => {
    let s = addNotifications(emptyInbox(), [note('50-0'), note('51-0')])
    s = addNotifications(s, [note('10-0'), note('50-0'), note('20-0')])
    expect(ids(s)).toEqual(['51-0', '50-0', '20-0', '10-0'])
    expect(s.lastId).toBe('51-0')
  })

  it('never moves lastId backwards', () => {
    let s = addNotifications(emptyInbox(), [note('100-0')])
    s = addNotifications(s, [note('5-0')])
    expect(s.lastId).toBe('100-0')
  })

  it('caps the number of items, keeping the newest', () => {
    let s = emptyInbox(3)
    s = addNotifications(s, ['1-0', '2-0', '3-0', '4-0', '5-0'].map((i) => note(i)))
    expect(ids(s)).toEqual(['5-0', '4-0', '3-0'])
  })
})

describe('unread badge', () => {
  it('counts the baseline plus what arrived after it', () => {
    let s = addNotifications(emptyInbox(), [note('1-0'), note('2-0'), note('3-0')])
    s = setBaseline(s, { unread: 2, last_id: '3-0' })
    expect(unreadCount(s)).toBe(2)
    expect([...unreadIds(s)]).toEqual(['3-0', '2-0'])
    s = addNotifications(s, [note('4-0')])
    expect(unreadCount(s)).toBe(3)
    expect(unreadIds(s).has('4-0')).toBe(true)
    expect(unreadIds(s).has('1-0')).toBe(false)
  })

  it('does not count replayed notifications twice (they are in hello\'s count)', () => {
    // hello said 5 unread up to 10-0; the replay then brings 8-0..10-0.
    let s = addNotifications(emptyInbox(), [note('7-0')])
    s = setBaseline(s, { unread: 5, last_id: '10-0' })
    s = addNotifications(s, [note('8-0'), note('9-0'), note('10-0')])
    expect(unreadCount(s)).toBe(5)
    s = addNotifications(s, [note('11-0')])
    expect(unreadCount(s)).toBe(6)
  })

  it('ignores an older baseline than the one it holds', () => {
    let s = setBaseline(emptyInbox(), { unread: 4, last_id: '10-0' })
    s = setBaseline(s, { unread: 9, last_id: '8-0' })
    expect(s.base).toMatchObject({ unread: 4, id: '10-0' })
  })

  it('applies a read mark from this or another session', () => {
    let s = addNotifications(emptyInbox(), [note('1-0'), note('2-0'), note('3-0')])
    s = setBaseline(s, { unread: 3, last_id: '3-0' })
    s = applyRead(s, { up_to: '2-0', unread: 1 })
    expect(unreadCount(s)).toBe(1)
    expect([...unreadIds(s)]).toEqual(['3-0'])
    s = applyRead(s, { up_to: newestId(s), unread: 0 })
    expect(unreadCount(s)).toBe(0)
    expect(unreadIds(s).size).toBe(0)
  })

  it('a read mark covers notifications that were already received', () => {
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: '1-0' })
    s = addNotifications(s, [note('2-0'), note('3-0')])
    expect(unreadCount(s)).toBe(2)
    // the server counted 3-0 as still unread when 2-0 was marked
    s = applyRead(s, { up_to: '2-0', unread: 1 })
    expect(unreadCount(s)).toBe(1)
  })

  it('works with an empty stream (null last_id)', () => {
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    expect(unreadCount(s)).toBe(0)
    s = addNotifications(s, [note('1-0')])
    expect(unreadCount(s)).toBe(1)
  })
})
