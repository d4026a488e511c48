// Retrying a connect that the server refused.
//
// Why this exists: when the server's connect handler refuses a socket
// (python-socketio's ConnectionRefusedError), socket.io-client reports a
// `connect_error` with `socket.active === false` and does NOT reconnect: its
// own backoff (RECONNECT in socket.js) covers transport errors only. The
// server refuses with "service unavailable, retry in a moment"
// (notifylab/server/sockets.py, UNAVAILABLE) while Redis is unreachable or
// during a reconnect storm. That refusal is temporary, so NotifyClient
// (client.js) calls `socket.connect()` again itself, after a full-jitter
// exponential backoff: every tab refused by one instance must not come back
// in the same millisecond. Any other refusal ("unauthorized: log in first",
// a revoked session) is not retried blindly: the client checks the session.

/** What the server's refusal message says during an outage (matched case-insensitively). */
export const UNAVAILABLE = 'service unavailable'

/** Delays in ms: attempt n waits a uniform random time in [0, min(cap, base * 2^n)). */
export const BACKOFF = { base: 1000, cap: 20000 }

/** Is this `connect_error` the server's temporary "service unavailable" refusal? */
export function isUnavailable(err) {
  const message = err && typeof err.message === 'string' ? err.message : ''
  return message.toLowerCase().includes(UNAVAILABLE)
}

/**
 * Full jitter: a delay in [0, min(cap, base * 2^attempt)), `attempt` counting
 * from 0. `random` is injectable (tests); it returns a number in [0, 1).
 */
export function backoffDelay(attempt, { base = BACKOFF.base, cap = BACKOFF.cap, random = Math.random } = {}) {
  const n = Math.min(Math.max(0, Math.floor(attempt) || 0), 30) // 2^30 * base is far past any cap
  const ceiling = Math.min(cap, base * 2 ** n)
  return Math.floor(random() * ceiling)
}
