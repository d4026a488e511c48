import { io } from 'socket.io-client'
import { basePath, isProxied } from './base.js'

// Reconnect backoff: 500 ms doubling up to 5 s, each delay randomized by
// ±50% so that the tabs dropped by one instance restart do not all come
// back in the same instant. Catch-up after a reconnect is the `auth`
// callback's job (see client.js), not the transport's.
export const RECONNECT = {
  reconnection: true,
  reconnectionDelay: 500,
  reconnectionDelayMax: 5000,
  randomizationFactor: 0.5,
}

/**
 * Socket.IO options for a page at `pathname`. Same origin in both cases: the
 * page is served by the instance it talks to (directly or through the proxy),
 * and the browser sends the session cookie with the handshake.
 */
export function socketOptions(pathname) {
  const options = {
    path: `${basePath(pathname)}socket.io`,
    withCredentials: true,
    ...RECONNECT,
  }
  // Long-polling through jupyter-server-proxy is unreliable; its websocket
  // proxying works. At "/" keep the default polling-then-upgrade, which the
  // sessions list reports (and a browser test checks).
  if (isProxied(pathname)) options.transports = ['websocket']
  return options
}

export function connectSocket(options) {
  return io({
    ...socketOptions(globalThis.location && globalThis.location.pathname),
    ...options,
  })
}
