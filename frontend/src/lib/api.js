// REST client for the notifylab server. Same origin: the session travels in
// the HttpOnly `notifylab_session` cookie. Paths are relative to `base`, the
// page's directory, so that they also work under a proxy prefix (base.js).
import { pageBase } from './base.js'

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`)
    this.name = 'ApiError'
    this.status = status
    this.field = body && body.field ? body.field : null
    this.body = body
  }
}

export function createApi(fetchImpl = (...a) => globalThis.fetch(...a), base = pageBase()) {
  async function request(method, path, body) {
    const init = {
      method,
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
    }
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json'
      init.body = JSON.stringify(body)
    }
    let res
    try {
      res = await fetchImpl(base + path, init)
    } catch (e) {
      throw new ApiError(0, { error: 'The server cannot be reached. Retrying helps once it is back.' })
    }
    let data = null
    const text = await res.text()
    if (text) {
      try {
        data = JSON.parse(text)
      } catch {
        data = { error: text.slice(0, 200) }
      }
    }
    if (!res.ok) throw new ApiError(res.status, data)
    return data
  }

  return {
    register: (username, password) => request('POST', 'api/register', { username, password }),
    login: (username, password) => request('POST', 'api/login', { username, password }),
    logout: () => request('POST', 'api/logout', {}),
    logoutAll: () => request('POST', 'api/logout-all', {}),
    me: () => request('GET', 'api/me'),
    sessions: () => request('GET', 'api/sessions'),
    revokeSession: (id) => request('DELETE', `api/sessions/${encodeURIComponent(id)}`),
    kinds: () => request('GET', 'api/kinds'),
    operations: () => request('GET', 'api/operations'),
    startOperation: (kind, params) => request('POST', 'api/operations', { kind, params }),
    operation: (id) => request('GET', `api/operations/${encodeURIComponent(id)}`),
    cancelOperation: (id) => request('POST', `api/operations/${encodeURIComponent(id)}/cancel`, {}),
    inbox: ({ after, limit } = {}) => {
      const q = new URLSearchParams()
      if (after) q.set('after', after)
      if (limit) q.set('limit', String(limit))
      const qs = q.toString()
      return request('GET', `api/inbox${qs ? `?${qs}` : ''}`)
    },
    markRead: (up_to) => request('POST', 'api/inbox/read', { up_to }),
  }
}
