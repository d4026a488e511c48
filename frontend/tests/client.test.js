import { describe, expect, it } from 'vitest'
import { NotifyClient } from '../src/lib/client.js'
import { unreadCount } from '../src/lib/inbox.js'
import { FakeSocket, fakeApi, manualTimers, note } from './helpers.js'

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
      inbox: async () => ({ notifications: [note('1-0'), note('2-0')], unread: 2, last_id: '2-0' }),
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
    s.fire('notification', note('5-0'))
    s.fire('notification', note('6-0'))
    s.drop()
    expect(client.getState().connection.status).toBe('reconnecting')
    // Reconnect on instance b: the server replays after 6-0, and (overlap)
    // a live event the client already had arrives again.
    const sent = s.serverConnect('sid2', { instance: 'b', unread: 4, operations: [], last_id: '8-0' })
    expect(sent).toEqual({ last_id: '6-0' })
    s.fire('notification', note('6-0'))
    s.fire('notification', note('7-0'))
    s.fire('notification', note('8-0'))
    s.fire('notification', note('8-0'))
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
    s.fire('notification', note('1000-0'))
    s.fire('notification', note('999-5')) // older, arrives late
    s.drop()
    expect(s.serverConnect('sid2', null)).toEqual({ last_id: '1000-0' })
  })

  it('asks for the rest with sync if the replay stops short of hello.last_id', async () => {
    const { client, timers, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.fire('notification', note('1-0'))
    s.drop()
    s.acks.sync = ({ after }) => ({ ok: true, notifications: after === '2-0' ? [note('3-0')] : [], unread: 2 })
    s.serverConnect('sid2', { instance: 'a', unread: 2, operations: [], last_id: '3-0' })
    s.fire('notification', note('2-0')) // replay lost 3-0
    timers.runAll()
    await flush()
    expect(s.emitted).toContainEqual(['sync', { after: '2-0' }])
    expect(ids(client)).toEqual(['3-0', '2-0', '1-0'])
  })

  it('does not sync when the replay completed', async () => {
    const { timers, socket } = setup()
    const s = socket()
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    s.fire('notification', note('1-0'))
    s.drop()
    s.serverConnect('sid2', { instance: 'a', unread: 1, operations: [], last_id: '2-0' })
    s.fire('notification', note('2-0'))
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
      inbox: async () => ({ notifications: [note('1-0'), note('2-0')], unread: 2, last_id: '2-0' }),
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
    socket().fire('notification', note('1-0'))
    expect(unreadCount(client.getState().inbox)).toBe(1)
    await client.markRead('1-0')
    expect(unreadCount(client.getState().inbox)).toBe(0)
  })
})
