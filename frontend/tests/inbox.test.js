import { describe, expect, it } from 'vitest'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import {
  INBOX_TYPES,
  addNotifications,
  applyRead,
  emptyInbox,
  isInboxItem,
  isPublished,
  newestId,
  setBaseline,
  unreadCount,
  unreadIds,
} from '../src/lib/inbox.js'
import { item, note, published } from './helpers.js'

const ids = (s) => s.items.map((n) => n.id)

describe('inbox dedupe and ordering', () => {
  it('keeps newest first by stream id, comparing ids as numbers', () => {
    let s = emptyInbox()
    s = addNotifications(s, [item('999-0'), item('1000-0'), item('1000-10'), item('1000-9')])
    expect(ids(s)).toEqual(['1000-10', '1000-9', '1000-0', '999-0'])
    expect(s.lastId).toBe('1000-10')
  })

  it('drops duplicates within a batch and across batches', () => {
    let s = emptyInbox()
    s = addNotifications(s, [item('1-0'), item('2-0'), item('2-0')])
    s = addNotifications(s, [item('2-0'), item('3-0'), item('1-0')])
    expect(ids(s)).toEqual(['3-0', '2-0', '1-0'])
  })

  it('returns the same object when nothing is new (no re-render)', () => {
    const s = addNotifications(emptyInbox(), [item('1-0')])
    expect(addNotifications(s, [item('1-0')])).toBe(s)
    expect(addNotifications(s, [])).toBe(s)
    expect(addNotifications(s, [{ id: 'garbage' }, null])).toBe(s)
  })

  it('merges an older page (REST load after live events) in order', () => {
    let s = addNotifications(emptyInbox(), [item('50-0'), item('51-0')])
    s = addNotifications(s, [item('10-0'), item('50-0'), item('20-0')])
    expect(ids(s)).toEqual(['51-0', '50-0', '20-0', '10-0'])
    expect(s.lastId).toBe('51-0')
  })

  it('never moves lastId backwards', () => {
    let s = addNotifications(emptyInbox(), [item('100-0')])
    s = addNotifications(s, [item('5-0')])
    expect(s.lastId).toBe('100-0')
  })

  it('caps the number of items, keeping the newest', () => {
    let s = emptyInbox(3)
    s = addNotifications(s, ['1-0', '2-0', '3-0', '4-0', '5-0'].map((i) => item(i)))
    expect(ids(s)).toEqual(['5-0', '4-0', '3-0'])
  })
})

describe('unread badge', () => {
  it('counts the baseline plus what arrived after it', () => {
    let s = addNotifications(emptyInbox(), [item('1-0'), item('2-0'), item('3-0')])
    s = setBaseline(s, { unread: 2, last_id: '3-0' })
    expect(unreadCount(s)).toBe(2)
    expect([...unreadIds(s)]).toEqual(['3-0', '2-0'])
    s = addNotifications(s, [item('4-0')])
    expect(unreadCount(s)).toBe(3)
    expect(unreadIds(s).has('4-0')).toBe(true)
    expect(unreadIds(s).has('1-0')).toBe(false)
  })

  it('does not count replayed notifications twice (they are in hello\'s count)', () => {
    // hello said 5 unread up to 10-0; the replay then brings 8-0..10-0.
    let s = addNotifications(emptyInbox(), [item('7-0')])
    s = setBaseline(s, { unread: 5, last_id: '10-0' })
    s = addNotifications(s, [item('8-0'), item('9-0'), item('10-0')])
    expect(unreadCount(s)).toBe(5)
    s = addNotifications(s, [item('11-0')])
    expect(unreadCount(s)).toBe(6)
  })

  it('ignores an older baseline than the one it holds', () => {
    let s = setBaseline(emptyInbox(), { unread: 4, last_id: '10-0' })
    s = setBaseline(s, { unread: 9, last_id: '8-0' })
    expect(s.base).toMatchObject({ unread: 4, id: '10-0' })
  })

  it('applies a read mark from this or another session', () => {
    let s = addNotifications(emptyInbox(), [item('1-0'), item('2-0'), item('3-0')])
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
    s = addNotifications(s, [item('2-0'), item('3-0')])
    expect(unreadCount(s)).toBe(2)
    // the server counted 3-0 as still unread when 2-0 was marked
    s = applyRead(s, { up_to: '2-0', unread: 1 })
    expect(unreadCount(s)).toBe(1)
  })

  it('works with an empty stream (null last_id)', () => {
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    expect(unreadCount(s)).toBe(0)
    s = addNotifications(s, [item('1-0')])
    expect(unreadCount(s)).toBe(1)
  })
})

describe('the inbox rule (protocol.py is_inbox_item)', () => {
  it.each([
    ['operation.succeeded', true],
    ['operation.failed', true],
    ['operation.cancelled', true],
    ['operation.restarted', true],
    ['operation.queued', false],
    ['operation.started', false],
    ['operation.progress', false],
    ['operation.something-new', false],
    ['billing.invoice', true],
    ['notification', true],
    ['', false],
    [undefined, false],
    [null, false],
    [42, false],
  ])('type %j is an inbox item: %s', (type, expected) => {
    expect(isInboxItem({ id: '1-0', type })).toBe(expected)
  })

  it('is false for a missing notification or type', () => {
    expect(isInboxItem(null)).toBe(false)
    expect(isInboxItem(undefined)).toBe(false)
    expect(isInboxItem({ id: '1-0' })).toBe(false)
  })

  it('calls published only what is outside "operation."', () => {
    expect(isPublished(published('1-0'))).toBe(true)
    expect(isPublished(item('1-0'))).toBe(false)
    expect(isPublished(note('1-0'))).toBe(false)
    expect(isPublished({ id: '1-0', type: '' })).toBe(false)
  })

  // The rule is written down once per language: this keeps the two in step.
  const protocol = fileURLToPath(new URL('../../notifylab/protocol.py', import.meta.url))
  it.skipIf(!existsSync(protocol))('has the same INBOX_TYPES as notifylab/protocol.py', () => {
    const source = readFileSync(protocol, 'utf8')
    const terminal = /^TERMINAL_TYPES = frozenset\(\{([^}]*)\}\)/m.exec(source)
    const inbox = /^INBOX_TYPES = TERMINAL_TYPES \| \{([^}]*)\}/m.exec(source)
    expect(terminal && inbox).toBeTruthy()
    const names = (text) => [...text.matchAll(/"([^"]+)"/g)].map((m) => m[1])
    const python = new Set([...names(terminal[1]), ...names(inbox[1])])
    expect([...INBOX_TYPES].sort()).toEqual([...python].sort())
    expect(source).toMatch(/^OPERATION_TYPE_PREFIX = "operation\."$/m)
  })
})

// One operation of n steps, as the worker writes it to the stream.
function operationNotes(first, steps, { operation = 'op1', end = 'succeeded' } = {}) {
  const id = (i) => `${first + i}-0`
  const list = [
    note(id(0), { operation, type: 'operation.queued', state: 'queued', step: 0, progress: 0 }),
    note(id(1), { operation, type: 'operation.started', state: 'running', step: 0, progress: 0 }),
  ]
  for (let step = 1; step <= steps; step++) {
    list.push(note(id(1 + step), { operation, step, steps, progress: step / steps }))
  }
  list.push(note(id(2 + steps), { operation, type: `operation.${end}`, state: end, step: steps, steps }))
  return list
}

describe('inbox items and the unread count', () => {
  it('lists and counts one item for an operation of n steps, yet follows the stream', () => {
    const stream = operationNotes(100, 6)
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    for (const n of stream) s = addNotifications(s, n)
    expect(ids(s)).toEqual(['108-0'])
    expect(s.items[0].type).toBe('operation.succeeded')
    expect(unreadCount(s)).toBe(1)
    expect(s.lastId).toBe('108-0')
  })

  it('moves lastId on progress (the replay cursor) without listing it', () => {
    let s = addNotifications(emptyInbox(), [item('1-0')])
    const before = s
    s = addNotifications(s, [note('2-0'), note('3-0')])
    expect(s).not.toBe(before)
    expect(s.lastId).toBe('3-0')
    expect(s.items).toBe(before.items)
    expect(unreadCount(s)).toBe(1)
    // nothing new at all: the same object
    expect(addNotifications(s, [note('2-0'), item('1-0')])).toBe(s)
  })

  it('lists published notifications and counts them as unread', () => {
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: '1-0' })
    s = addNotifications(s, [published('2-0'), note('3-0'), published('4-0', { type: 'notification' })])
    expect(ids(s)).toEqual(['4-0', '2-0'])
    expect(unreadCount(s)).toBe(2)
  })

  it('keeps a REST page of mixed notifications consistent with its count', () => {
    // GET /api/inbox: the server counts 2 unread items (5-0 and 14-0).
    const page = [...operationNotes(1, 2, { operation: 'a' }), ...operationNotes(10, 2, { operation: 'b', end: 'failed' })]
    let s = addNotifications(emptyInbox(), page)
    s = setBaseline(s, { unread: 2, last_id: '14-0' })
    expect(ids(s)).toEqual(['14-0', '5-0'])
    expect(unreadCount(s)).toBe(2)
    expect([...unreadIds(s)]).toEqual(['14-0', '5-0'])
  })

  it('after a replay, adds to hello\'s count only the items newer than its last_id', () => {
    // Seen before the drop: op a finished (unread), op b half way.
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    s = addNotifications(s, operationNotes(1, 3, { operation: 'a' })) // 1-0..6-0, item 6-0
    s = addNotifications(s, operationNotes(10, 4, { operation: 'b' }).slice(0, 4)) // 10-0..13-0
    expect(unreadCount(s)).toBe(1)
    expect(s.lastId).toBe('13-0')
    // Reconnect: hello counts 6-0, 16-0 (b succeeded) and 17-0 (published) as of 17-0 ...
    s = setBaseline(s, { unread: 3, last_id: '17-0' })
    expect(unreadCount(s)).toBe(3)
    // ... then replays 14-0..17-0: counted in hello already.
    s = addNotifications(s, [note('14-0', { operation: 'b' }), note('15-0', { operation: 'b' })])
    s = addNotifications(s, [item('16-0', { operation: 'b' }), published('17-0')])
    expect(unreadCount(s)).toBe(3)
    expect(ids(s)).toEqual(['17-0', '16-0', '6-0'])
    // Live after hello: progress does not count, an outcome and a publish do.
    s = addNotifications(s, operationNotes(20, 2, { operation: 'c' }).slice(0, 4)) // queued..progress 2
    expect(unreadCount(s)).toBe(3)
    s = addNotifications(s, item('24-0', { operation: 'c', type: 'operation.cancelled', state: 'cancelled' }))
    s = addNotifications(s, published('25-0'))
    expect(unreadCount(s)).toBe(5)
    // A replay delivered twice (overlap with live) changes nothing.
    expect(addNotifications(s, [item('16-0'), published('25-0'), note('21-0')])).toBe(s)
  })

  it('marks one read: that item and every older one', () => {
    let s = addNotifications(emptyInbox(), [
      item('4-0', { type: 'operation.cancelled', state: 'cancelled' }),
      note('5-0'),
      note('6-0'),
      item('8-0'),
      note('9-0'),
      published('10-0'),
    ])
    s = setBaseline(s, { unread: 3, last_id: '10-0' })
    expect([...unreadIds(s)]).toEqual(['10-0', '8-0', '4-0'])
    s = applyRead(s, { up_to: '8-0', unread: 1 })
    expect(unreadCount(s)).toBe(1)
    expect([...unreadIds(s)]).toEqual(['10-0'])
  })

  it('marks all read up to the newest id received, progress included', () => {
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    s = addNotifications(s, [item('1-0'), note('2-0', { operation: 'op2' })])
    expect(newestId(s)).toBe('2-0')
    s = applyRead(s, { up_to: newestId(s), unread: 0 })
    expect(unreadCount(s)).toBe(0)
    s = addNotifications(s, note('3-0', { operation: 'op2' }))
    expect(unreadCount(s)).toBe(0)
    s = addNotifications(s, item('4-0', { operation: 'op2' }))
    expect(unreadCount(s)).toBe(1)
    expect(newestId(emptyInbox())).toBe(null)
  })

  it('a read mark covers the progress already received, not only items', () => {
    // An inbox:read from another tab, marked at an item older than progress we hold.
    let s = setBaseline(emptyInbox(), { unread: 0, last_id: null })
    s = addNotifications(s, [item('1-0'), note('2-0'), note('3-0')])
    s = applyRead(s, { up_to: '1-0', unread: 0 })
    expect(s.base.id).toBe('3-0')
    expect(unreadCount(s)).toBe(0)
  })

  it('caps the listed items, not the stream cursor', () => {
    let s = emptyInbox(2)
    s = addNotifications(s, [item('1-0'), item('2-0'), note('3-0'), item('4-0'), note('5-0')])
    expect(ids(s)).toEqual(['4-0', '2-0'])
    expect(s.lastId).toBe('5-0')
  })
})
