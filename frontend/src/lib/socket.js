import { io } from 'socket.io-client'

// Same origin: the page is served by the instance it talks to, and the
// browser sends the session cookie with the handshake.
export function connectSocket(options) {
  return io({
    path: '/socket.io',
    withCredentials: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 3000,
    ...options,
  })
}
