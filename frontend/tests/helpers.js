// Test helpers: notifications and a fake Socket.IO socket.

let seq = 0
export function note(id, extra = {}) {
  return {
    id,
    user: 'alice',
    type: 'operation.progress',
    operation: 'op1',
    kind: 'count',
    state: 'running',
    step: 1,
    steps: 5,
    progress: 0.2,
    message: `n${++seq}`,
    ts: Number(id.split('-')[0]),
    ...extra,
  }
}

/** An inbox item: an operation's outcome (counted and listed). */
export function item(id, extra = {}) {
  return note(id, { type: 'operation.succeeded', state: 'succeeded', step: 5, progress: 1, ...extra })
}

/** A published notification (POST /api/publish), as the server emits it. */
export function published(id, extra = {}) {
  const title = extra.title ?? `Invoice ${id}`
  return {
    id,
    user: 'alice',
    type: 'billing.invoice',
    title,
    body: 'Your invoice is ready.',
    data: { invoice: 'INV-1' },
    ts: Number(id.split('-')[0]),
    operation: '',
    kind: '',
    state: '',
    step: 0,
    steps: 0,
    progress: 0,
    message: title,
    ...extra,
  }
}

/** A fake socket.io-client Socket driven by the test. */
export class FakeSocket {
  constructor(options) {
    this.options = options
    this.handlers = {}
    this.ioHandlers = {}
    this.engineHandlers = {}
    this.connected = false
    this.active = true
    this.id = null
    this.authSent = []
    this.emitted = []
    this.acks = {} // event -> (payload) => response
    const self = this
    this.io = {
      on: (ev, fn) => ((self.ioHandlers[ev] ||= []).push(fn)),
      off: () => (self.ioHandlers = {}),
      engine: {
        transport: { name: 'polling' },
        on: (ev, fn) => ((self.engineHandlers[ev] ||= []).push(fn)),
      },
    }
  }
  on(ev, fn) {
    ;(this.handlers[ev] ||= []).push(fn)
    return this
  }
  off() {
    this.handlers = {}
    return this
  }
  fire(ev, ...args) {
    for (const fn of this.handlers[ev] || []) fn(...args)
  }
  /** Simulate a (re)connect: the auth function runs, then connect + hello. */
  serverConnect(sid, hello) {
    let payload
    this.options.auth((p) => (payload = p))
    this.authSent.push(payload)
    this.connected = true
    this.id = sid
    this.io.engine.transport = { name: 'polling' }
    this.fire('connect')
    if (hello) this.fire('hello', typeof hello === 'function' ? hello(payload) : hello)
    return payload
  }
  upgrade(name = 'websocket') {
    this.io.engine.transport = { name }
    for (const fn of this.engineHandlers.upgrade || []) fn({ name })
  }
  drop(reason = 'transport close') {
    this.connected = false
    this.fire('disconnect', reason)
    for (const fn of this.ioHandlers.reconnect_attempt || []) fn(1)
  }
  timeout() {
    return this
  }
  async emitWithAck(ev, payload) {
    this.emitted.push([ev, payload])
    const fn = this.acks[ev]
    if (!fn) throw new Error('operation has timed out')
    return fn(payload)
  }
  connect() {
    this.connectCalls = (this.connectCalls || 0) + 1
  }
  disconnect() {
    this.connected = false
    this.active = false
  }
}

export function fakeApi(overrides = {}) {
  const calls = []
  const api = {
    calls,
    inbox: async (args) => (calls.push(['inbox', args]), { notifications: [], unread: 0, last_id: null }),
    operations: async () => (calls.push(['operations']), { operations: [] }),
    me: async () => (calls.push(['me']), { user: { username: 'alice' } }),
    markRead: async (up_to) => (calls.push(['markRead', up_to]), { ok: true, unread: 0, up_to }),
    startOperation: async (kind, params) => (calls.push(['startOperation', kind, params]), { operation: { id: 'r1', kind, params, state: 'queued', created: 1, updated: 1 } }),
    cancelOperation: async (id) => (calls.push(['cancelOperation', id]), { operation: { id, state: 'cancelled', updated: 2 } }),
  }
  for (const [name, fn] of Object.entries(overrides)) {
    api[name] = (...args) => (calls.push([name, ...args]), fn(...args))
  }
  return api
}

export function manualTimers() {
  const pending = new Map()
  let n = 0
  return {
    setTimeout: (fn, ms) => (pending.set(++n, { fn, ms }), n),
    clearTimeout: (id) => pending.delete(id),
    runAll() {
      const list = [...pending.values()]
      pending.clear()
      list.forEach((t) => t.fn())
    },
    get size() {
      return pending.size
    },
  }
}
