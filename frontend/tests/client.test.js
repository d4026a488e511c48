import { describe, expect, it } from 'vitest'
import { NotifyClient } from '../src/lib/client.js'
import { newestId, unreadCount } from '../src/lib/inbox.js'
import { FakeSocket, fakeApi, item, manualTimers, note, published } from './helpers.js'

function setup(apiOverrides = {}) {
  const timers = manualTimers()
  const api = fakeApi(apiOverrides)
  let socket
  const client = new NotifyClient({
    api,
    timers,
    connect: (opts) => (socket = new FakeSocket(opts)),
  })
  client.start()
  return { client, api, timers, socket: () => socket }
}

const flush = () => new Promise((r) => setTimeout(r, 0))
const ids = (c) => c.getState().inbox.items.map((n) => n.id)

describe('reconnect catch-up', () => {
  it('sends last_id null on first connect, then loads the inbox over REST', async () => {
    const { client, api, socket } = setup({
      inbox: async () => ({ notifications: [item('1-0'), item('2-0')], unread: 2, last_id: '2-0' }),
    })
    const sent = socket().serverConnect('sidA', { instance: 'a', user: 'alice', unread: 2, operations: [], last_id: '2-0' })
    expect(sent).toEqual({ last_id: null })
    await flush()
    expect(ids(client)).toEqual(['2-0', '1-0'])
    expect(unreadCount(client.getState().inbox)).toBe(2)
    expect(client.getState().connection).toMatchObject({ status: 'connected', instance: 'a', sid: 'sidA', transport: 'polling' })
    expect(api.calls.filter((c) => c[0] === 'inbox')).toHaveLength(1)
  })

  it('sends the newest id seen on each reconnect and dedupes the replay', async () => {
    const { client, api, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    s.fire('notification', item('5-0'))
    s.fire('notification', item('6-0'))
    s.drop()
    expect(client.getState().connection.status).toBe('reconnecting')
    // Reconnect on instance b: the server replays after 6-0, and (overlap)
    // a live event the client already had arrives again.
    const sent = s.serverConnect('sid2', { instance: 'b', unread: 4, operations: [], last_id: '8-0' })
    expect(sent).toEqual({ last_id: '6-0' })
    s.fire('notification', item('6-0'))
    s.fire('notification', item('7-0'))
    s.fire('notification', item('8-0'))
    s.fire('notification', item('8-0'))
    expect(ids(client)).toEqual(['8-0', '7-0', '6-0', '5-0'])
    expect(client.getState().inbox.lastId).toBe('8-0')
    expect(client.getState().connection).toMatchObject({ status: 'connected', instance: 'b', sid: 'sid2' })
    // no REST reload on a reconnect with a last_id
    expect(api.calls.filter((c) => c[0] === 'inbox')).toHaveLength(1)
    // hello's count (4) already includes the replayed 7-0 and 8-0
    expect(unreadCount(client.getState().inbox)).toBe(4)
  })

  it('compares ids numerically when choosing last_id', async () => {
    const { socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.fire('notification', item('1000-0'))
    s.fire('notification', item('999-5')) // older, arrives late
    s.drop()
    expect(s.serverConnect('sid2', null)).toEqual({ last_id: '1000-0' })
  })

  it('asks for the rest with sync if the replay stops short of hello.last_id', async () => {
    const { client, timers, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.fire('notification', item('1-0'))
    s.drop()
    s.acks.sync = ({ after }) => ({ ok: true, notifications: after === '2-0' ? [item('3-0')] : [], unread: 2 })
    s.serverConnect('sid2', { instance: 'a', unread: 2, operations: [], last_id: '3-0' })
    s.fire('notification', item('2-0')) // replay lost 3-0
    timers.runAll()
    await flush()
    expect(s.emitted).toContainEqual(['sync', { after: '2-0' }])
    expect(ids(client)).toEqual(['3-0', '2-0', '1-0'])
  })

  it('does not sync when the replay completed', async () => {
    const { timers, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.fire('notification', item('1-0'))
    s.drop()
    s.serverConnect('sid2', { instance: 'a', unread: 1, operations: [], last_id: '2-0' })
    s.fire('notification', item('2-0'))
    timers.runAll()
    await flush()
    expect(s.emitted.filter((e) => e[0] === 'sync')).toHaveLength(0)
  })

  it('updates operations from notifications and hello snapshots', () => {
    const { client, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', {
      instance: 'a', unread: 0, last_id: null,
      operations: [{ id: 'op1', kind: 'count', state: 'running', step: 1, steps: 5, progress: 0.2, created: 1, updated: 1 }],
    })
    s.fire('notification', note('2000000000000-0', { operation: 'op1', step: 2, progress: 0.4 }))
    expect(client.getState().operations.byId.op1).toMatchObject({ step: 2, progress: 0.4 })
  })
})

describe('connection state', () => {
  it('tracks the transport upgrade', () => {
    const { client, socket } = setup()
    socket().serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    socket().upgrade('websocket')
    expect(client.getState().connection.transport).toBe('websocket')
  })

  it('inbox:read from another session updates the badge', async () => {
    const { client, socket } = setup({
      inbox: async () => ({ notifications: [item('1-0'), item('2-0')], unread: 2, last_id: '2-0' }),
    })
    socket().serverConnect('sid1', { instance: 'a', unread: 2, operations: [], last_id: '2-0' })
    await flush()
    expect(unreadCount(client.getState().inbox)).toBe(2)
    socket().fire('inbox:read', { up_to: '2-0', unread: 0 })
    expect(unreadCount(client.getState().inbox)).toBe(0)
  })

  it('session:revoked signs the tab out', () => {
    const { client, socket } = setup()
    socket().serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    socket().fire('session:revoked', { session: 's1' })
    expect(client.getState().signedOut).toEqual({ reason: 'revoked' })
    expect(client.getState().connection.status).toBe('closed')
  })

  it('signing itself out is not reported as signed out from another device', () => {
    const { client, socket } = setup()
    socket().serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    client.expectSignOut('logout-all')
    socket().fire('session:revoked', { session: 's1' })
    expect(client.getState().signedOut).toEqual({ reason: 'logout-all' })
  })

  it('a refused connection with no valid session signs out as expired', async () => {
    const err = Object.assign(new Error('unauthorized'), { status: 401 })
    const { client, socket } = setup({ me: async () => { throw err } })
    socket().active = false
    socket().fire('connect_error', new Error('not authenticated'))
    await flush()
    expect(client.getState().signedOut).toEqual({ reason: 'expired' })
  })

  it('a temporary failure shows reconnecting', () => {
    const { client, socket } = setup()
    socket().fire('connect_error', new Error('xhr poll error'))
    expect(client.getState().connection.status).toBe('reconnecting')
  })
})

describe('actions', () => {
  it('starts over the socket when connected and surfaces field errors', async () => {
    const { client, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.acks['operation:start'] = ({ params }) =>
      params.steps > 100 ? { ok: false, error: 'steps must be <= 100', field: 'params.steps' } : { ok: true, operation: { id: 'o9', kind: 'count', state: 'queued', created: 5, updated: 5 } }
    await expect(client.startOperation('count', { steps: 1000 })).rejects.toMatchObject({ message: 'steps must be <= 100', field: 'params.steps' })
    const op = await client.startOperation('count', { steps: 3 })
    expect(op.id).toBe('o9')
    expect(client.getState().operations.byId.o9.state).toBe('queued')
  })

  it('falls back to REST when not connected', async () => {
    const { client, api } = setup()
    const op = await client.startOperation('count', { steps: 3 })
    expect(op.id).toBe('r1')
    expect(api.calls).toContainEqual(['startOperation', 'count', { steps: 3 }])
  })

  it('mark read uses the answer to update the badge', async () => {
    const { client, socket } = setup()
    socket().serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    socket().fire('notification', item('1-0'))
    expect(unreadCount(client.getState().inbox)).toBe(1)
    await client.markRead('1-0')
    expect(unreadCount(client.getState().inbox)).toBe(0)
  })
})

describe('the inbox rule in the client', () => {
  const T = 2_000_000_000_000
  const at = (i) => `${T + i}-0`
  // One operation of `steps` steps as the server emits it (ids T+first...).
  const operation = (first, steps, op = 'op1') => [
    note(at(first), { operation: op, type: 'operation.queued', state: 'queued', step: 0, steps, progress: 0, ts: T + first }),
    note(at(first + 1), { operation: op, type: 'operation.started', state: 'running', step: 0, steps, progress: 0, ts: T + first + 1 }),
    ...Array.from({ length: steps }, (_, k) =>
      note(at(first + 2 + k), { operation: op, step: k + 1, steps, progress: (k + 1) / steps, ts: T + first + 2 + k }),
    ),
    item(at(first + 2 + steps), { operation: op, step: steps, steps, ts: T + first + 2 + steps }),
  ]

  it('an operation of n steps: the card follows every step, the badge says 1', async () => {
    const { client, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    const steps = []
    for (const n of operation(0, 5)) {
      s.fire('notification', n)
      steps.push(client.getState().operations.byId.op1.step)
    }
    expect(steps).toEqual([0, 0, 1, 2, 3, 4, 5, 5])
    expect(client.getState().operations.byId.op1.state).toBe('succeeded')
    expect(ids(client)).toEqual([at(7)])
    expect(unreadCount(client.getState().inbox)).toBe(1)
    expect(client.getState().inbox.lastId).toBe(at(7))
  })

  it('sends the newest id received, progress included, and is not fooled into a sync', async () => {
    const { client, timers, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    for (const n of operation(0, 4).slice(0, 4)) s.fire('notification', n) // up to progress 2
    s.drop()
    const sent = s.serverConnect('sid2', { instance: 'b', unread: 0, operations: [], last_id: at(3) })
    expect(sent).toEqual({ last_id: at(3) })
    timers.runAll()
    await flush()
    expect(s.emitted.filter((e) => e[0] === 'sync')).toHaveLength(0)
    expect(client.getState().inbox.items).toEqual([])
  })

  it('after a replay, the badge is hello\'s count plus the items newer than its last_id', async () => {
    const { client, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    const first = operation(0, 3) // at(0)..at(5), item at(5)
    first.forEach((n) => s.fire('notification', n))
    expect(unreadCount(client.getState().inbox)).toBe(1)
    s.drop()
    // Missed while away: op2 (at(10)..at(16), item at(16)) and a publish at(17).
    const missed = [...operation(10, 4, 'op2'), published(at(17), { ts: T + 17 })]
    s.serverConnect('sid2', { instance: 'b', unread: 3, operations: [], last_id: at(17) })
    missed.forEach((n) => s.fire('notification', n)) // the replay: in hello's 3
    expect(unreadCount(client.getState().inbox)).toBe(3)
    expect(ids(client)).toEqual([at(17), at(16), at(5)])
    // Live after hello: a third operation counts once, at its end.
    const third = operation(20, 3, 'op3')
    third.slice(0, -1).forEach((n) => s.fire('notification', n))
    expect(unreadCount(client.getState().inbox)).toBe(3)
    s.fire('notification', third[third.length - 1])
    expect(unreadCount(client.getState().inbox)).toBe(4)
    expect(Object.keys(client.getState().operations.byId).sort()).toEqual(['op1', 'op2', 'op3'])
  })

  it('lists only inbox items from the REST page, with its count', async () => {
    const page = [...operation(0, 3), ...operation(10, 2, 'op2')]
    const { client, socket } = setup({
      inbox: async () => ({ notifications: page, unread: 2, last_id: at(14) }),
    })
    socket().serverConnect('sid1', { instance: 'a', unread: 2, operations: [], last_id: at(14) })
    await flush()
    expect(ids(client)).toEqual([at(14), at(5)])
    expect(unreadCount(client.getState().inbox)).toBe(2)
    expect(client.getState().inbox.lastId).toBe(at(14))
    expect(client.getState().operations.byId.op2.state).toBe('succeeded')
  })

  it('mark all read marks up to the newest id received', async () => {
    const { client, api, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    operation(0, 2).forEach((n) => s.fire('notification', n))
    s.fire('notification', note(at(9), { operation: 'op2', type: 'operation.queued', state: 'queued' }))
    expect(unreadCount(client.getState().inbox)).toBe(1)
    await client.markRead(newestId(client.getState().inbox))
    expect(api.calls).toContainEqual(['markRead', at(9)])
    expect(unreadCount(client.getState().inbox)).toBe(0)
  })

  it('a published notification goes to the inbox, never to the operations', async () => {
    const { client, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    await flush()
    const n = published(at(1), { ts: T + 1 })
    s.fire('notification', n)
    expect(client.getState().inbox.items).toEqual([n])
    expect(unreadCount(client.getState().inbox)).toBe(1)
    expect(client.getState().operations.byId).toEqual({})
    expect(client.getState().inbox.lastId).toBe(at(1))
  })
})
