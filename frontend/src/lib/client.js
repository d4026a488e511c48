// NotifyClient: the framework-free core of the browser client. It owns the
// Socket.IO connection, the inbox and the operations, and exposes a small
// store (getState/subscribe) that React reads with useSyncExternalStore.
//
// Reconnect catch-up: the Socket.IO `auth` option is a function, called on
// every (re)connect, that sends the newest notification id this client has
// received (`last_id`, null the first time). The server answers `hello` and
// then replays every notification after that id; the inbox dedupes by id, so
// overlap with the live stream or with REST loads never shows twice. If the
// replay does not reach hello's `last_id` in time, the client asks for the
// rest with `sync {after}` (a safety net that stays idle when the server
// replays as promised).
//
// Refused connects: socket.io-client does not retry a connect that the
// server refused (see retry.js). A "service unavailable" refusal is retried
// here with jittered exponential backoff; any other refusal checks the
// session first (401: signed out, to the login view).
import { addNotifications, applyRead, emptyInbox, setBaseline } from './inbox.js'
import { emptyOperations, operationsReducer } from './operations.js'
import { compareIds } from './ids.js'
import { backoffDelay, isUnavailable } from './retry.js'

export const ACK_TIMEOUT_MS = 8000
export const SYNC_GRACE_MS = 1500

export function initialState() {
  return {
    connection: {
      status: 'connecting', // connecting | connected | reconnecting | unavailable | refused | closed
      instance: null,
      transport: null,
      sid: null,
      attempt: 0,
      error: null,
      retryAt: null, // Date.now() of the next connect, while one is scheduled
      connects: 0,
    },
    user: null,
    session: null,
    inbox: emptyInbox(),
    operations: emptyOperations(),
    inboxLoaded: false,
    signedOut: null, // null | {reason: 'revoked' | 'expired' | 'logout'}
  }
}

export class NotifyClient {
  /**
   * @param {object} opts
   * @param {object} opts.api        REST client (see api.js)
   * @param {Function} opts.connect  (options) => Socket.IO socket
   * @param {object} [opts.timers]   {setTimeout, clearTimeout} (tests)
   * @param {Function} [opts.random] jitter source in [0, 1) (tests)
   */
  constructor({ api, connect, timers = globalThis, random = Math.random }) {
    this.api = api
    this.connectFn = connect
    this.timers = timers
    this.random = random
    this.refusals = 0 // refused connects since the last successful one: the backoff attempt
    this.state = initialState()
    this.listeners = new Set()
    this.socket = null
    this.sentLastId = null
    this.syncTimer = null
    this.retryTimer = null
    this.stopped = false
    this.revoked = false
    this.expectedSignOut = null
    this.loadingInbox = null
    this.subscribe = this.subscribe.bind(this)
    this.getState = this.getState.bind(this)
  }

  getState() {
    return this.state
  }

  subscribe(fn) {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  set(patch) {
    const next = typeof patch === 'function' ? patch(this.state) : patch
    if (!next || next === this.state) return
    this.state = { ...this.state, ...next }
    for (const fn of this.listeners) fn()
  }

  setConnection(patch) {
    this.set((s) => ({ connection: { ...s.connection, ...patch } }))
  }

  /** The `auth` payload sent on each (re)connect. */
  authPayload() {
    this.sentLastId = this.state.inbox.lastId
    return { last_id: this.sentLastId }
  }

  start() {
    this.stopped = false
    const socket = this.connectFn({
      auth: (cb) => cb(this.authPayload()),
    })
    this.socket = socket
    socket.on('connect', () => this.onConnect())
    socket.on('hello', (h) => this.onHello(h))
    socket.on('notification', (n) => this.onNotifications([n]))
    socket.on('inbox:read', (r) => this.set((s) => ({ inbox: applyRead(s.inbox, r || {}) })))
    socket.on('session:revoked', () => this.onRevoked())
    socket.on('disconnect', (reason) => this.onDisconnect(reason))
    socket.on('connect_error', (err) => this.onConnectError(err))
    if (socket.io && socket.io.on) {
      socket.io.on('reconnect_attempt', (attempt) =>
        this.setConnection({ status: 'reconnecting', attempt, transport: null }),
      )
    }
    return this
  }

  stop() {
    this.stopped = true
    this.clearTimers()
    if (this.socket) {
      this.socket.off && this.socket.off()
      this.socket.io && this.socket.io.off && this.socket.io.off()
      this.socket.disconnect()
    }
    this.setConnection({ status: 'closed', retryAt: null })
  }

  clearTimers() {
    if (this.syncTimer) this.timers.clearTimeout(this.syncTimer)
    if (this.retryTimer) this.timers.clearTimeout(this.retryTimer)
    this.syncTimer = null
    this.retryTimer = null
  }

  transportName() {
    try {
      return this.socket.io.engine.transport.name
    } catch {
      return null
    }
  }

  onConnect() {
    const engine = this.socket.io && this.socket.io.engine
    if (engine && engine.on) {
      engine.on('upgrade', (t) => this.setConnection({ transport: (t && t.name) || this.transportName() }))
    }
    this.refusals = 0
    this.setConnection({
      retryAt: null,
      status: 'connected',
      sid: this.socket.id,
      transport: this.transportName(),
      attempt: 0,
      error: null,
      connects: this.state.connection.connects + 1,
    })
  }

  onHello(h) {
    if (!h) return
    this.set((s) => ({
      user: h.user ?? s.user,
      session: h.session ?? s.session,
      connection: { ...s.connection, instance: h.instance ?? null, sid: this.socket.id },
      inbox: setBaseline(s.inbox, { unread: h.unread, last_id: h.last_id }),
      operations: operationsReducer(s.operations, { type: 'snapshot', operations: h.operations || [] }),
    }))
    if (this.sentLastId === null) {
      // First connect (or nothing received yet): no replay; load over REST.
      this.loadInbox()
    } else if (h.last_id && compareIds(h.last_id, this.state.inbox.lastId) > 0) {
      this.scheduleSync(h.last_id)
    }
  }

  scheduleSync(target) {
    if (this.syncTimer) this.timers.clearTimeout(this.syncTimer)
    this.syncTimer = this.timers.setTimeout(() => {
      this.syncTimer = null
      if (compareIds(this.state.inbox.lastId, target) < 0) this.sync()
    }, SYNC_GRACE_MS)
  }

  async loadInbox() {
    if (this.loadingInbox) return this.loadingInbox
    this.loadingInbox = (async () => {
      try {
        const [inbox, ops] = await Promise.all([
          this.api.inbox({ limit: 100 }),
          this.api.operations().catch(() => null),
        ])
        this.set((s) => {
          let next = addNotifications(s.inbox, inbox.notifications || [])
          next = setBaseline(next, { unread: inbox.unread, last_id: inbox.last_id })
          let operations = s.operations
          if (ops && ops.operations) {
            operations = operationsReducer(operations, { type: 'snapshot', operations: ops.operations })
          }
          operations = operationsReducer(operations, {
            type: 'notification',
            notifications: inbox.notifications || [],
          })
          return { inbox: next, operations, inboxLoaded: true }
        })
      } catch (e) {
        this.handleApiError(e)
      } finally {
        this.loadingInbox = null
      }
    })()
    return this.loadingInbox
  }

  /** Ask the server for everything after our newest id (socket `sync`). */
  async sync() {
    if (!this.socket || !this.socket.connected) return
    try {
      const res = await this.socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck('sync', { after: this.state.inbox.lastId })
      if (res && res.ok) {
        this.onNotifications(res.notifications || [])
      }
    } catch {
      /* the next reconnect replays anyway */
    }
  }

  onNotifications(list) {
    if (!list.length) return
    this.set((s) => ({
      inbox: addNotifications(s.inbox, list),
      operations: operationsReducer(s.operations, { type: 'notification', notifications: list }),
    }))
  }

  /**
   * This tab is about to end its own session (sign out, sign out everywhere,
   * revoke its own session): the `session:revoked` that the server sends
   * first must not read as "signed out from another device".
   */
  expectSignOut(reason) {
    this.expectedSignOut = reason
  }

  onRevoked() {
    this.revoked = true
    this.signOut(this.expectedSignOut || 'revoked')
  }

  signOut(reason) {
    if (this.state.signedOut) return
    this.set({ signedOut: { reason } })
    this.stop()
  }

  onDisconnect(reason) {
    if (this.stopped) return
    if (reason === 'io client disconnect') {
      this.setConnection({ status: 'closed' })
      return
    }
    if (reason === 'io server disconnect') {
      // The server closed us on purpose: revoked (handled), or the session
      // is gone. Check, and reconnect if we are still signed in.
      if (this.revoked) return
      this.setConnection({ status: 'reconnecting', transport: null })
      this.checkSessionThenReconnect()
      return
    }
    // Transport closed or ping timeout: socket.io-client reconnects itself.
    this.setConnection({ status: 'reconnecting', transport: null })
  }

  onConnectError(err) {
    if (this.stopped) return
    if (this.socket.active) {
      // Temporary failure (instance down): the manager keeps retrying.
      this.setConnection({ status: 'reconnecting', error: err && err.message, transport: null })
      return
    }
    if (isUnavailable(err)) {
      // Refused for now (store outage, reconnect storm): socket.io-client
      // will not retry this, so retry after a jittered backoff. No session
      // check: it would only add load to a server that is already struggling.
      const delay = this.scheduleReconnect()
      this.setConnection({
        status: 'unavailable',
        error: err.message,
        transport: null,
        attempt: this.refusals,
        retryAt: Date.now() + delay,
      })
      return
    }
    // Refused by the server (not signed in?).
    this.setConnection({ status: 'refused', error: err && err.message, transport: null })
    this.checkSessionThenReconnect()
  }

  /**
   * Call `socket.connect()` after the next jittered backoff delay (see
   * retry.js); the attempt count resets on a successful connect and the
   * timer is cleared by stop() (unmount, sign out). Returns the delay.
   */
  scheduleReconnect() {
    const delay = backoffDelay(this.refusals, { random: this.random })
    this.refusals += 1
    if (this.retryTimer) this.timers.clearTimeout(this.retryTimer)
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = null
      if (this.stopped || !this.socket || this.socket.connected) return
      this.setConnection({ status: 'reconnecting', attempt: this.refusals, retryAt: null })
      this.socket.connect()
    }, delay)
    return delay
  }

  async checkSessionThenReconnect() {
    try {
      await this.api.me()
    } catch (e) {
      if (e && e.status === 401) {
        this.signOut(this.revoked ? 'revoked' : 'expired')
        return
      }
    }
    if (this.stopped) return
    this.scheduleReconnect()
  }

  handleApiError(e) {
    if (e && e.status === 401) this.signOut(this.revoked ? 'revoked' : 'expired')
  }

  async emitOrRest(event, payload, rest) {
    if (this.socket && this.socket.connected) {
      let res
      try {
        res = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload)
      } catch {
        res = undefined // no ack in time: fall back to REST
      }
      if (res) {
        if (!res.ok) {
          const err = new Error(res.error || 'Request refused')
          err.field = res.field || null
          throw err
        }
        return res
      }
    }
    try {
      return await rest()
    } catch (e) {
      this.handleApiError(e)
      throw e
    }
  }

  async startOperation(kind, params) {
    const res = await this.emitOrRest('operation:start', { kind, params }, () =>
      this.api.startOperation(kind, params),
    )
    if (res.operation) this.set((s) => ({ operations: operationsReducer(s.operations, { type: 'upsert', operation: res.operation }) }))
    return res.operation
  }

  async cancelOperation(id) {
    const res = await this.emitOrRest('operation:cancel', { id }, () => this.api.cancelOperation(id))
    if (res.operation) this.set((s) => ({ operations: operationsReducer(s.operations, { type: 'upsert', operation: res.operation }) }))
    return res.operation
  }

  async markRead(upTo) {
    if (!upTo) return
    try {
      const res = await this.api.markRead(upTo)
      this.set((s) => ({ inbox: applyRead(s.inbox, { up_to: res.up_to || upTo, unread: res.unread }) }))
    } catch (e) {
      this.handleApiError(e)
      throw e
    }
  }
}
