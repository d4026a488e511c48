import { afterEach, describe, expect, it, vi } from 'vitest'
import { io } from 'socket.io-client'
import { basePath, isProxied } from '../src/lib/base.js'
import { RECONNECT, connectSocket, socketOptions } from '../src/lib/socket.js'
import { createApi } from '../src/lib/api.js'

describe('base path', () => {
  it('is the directory of the page, with its trailing slash', () => {
    expect(basePath('/')).toBe('/')
    expect(basePath('/index.html')).toBe('/')
    expect(basePath('/proxy/8081/')).toBe('/proxy/8081/')
    expect(basePath('/proxy/8081/index.html')).toBe('/proxy/8081/')
    expect(basePath('/notifylab/')).toBe('/notifylab/')
    expect(basePath('/user/alice/proxy/8082/')).toBe('/user/alice/proxy/8082/')
  })

  it('falls back to "/" outside a browser', () => {
    expect(basePath(undefined)).toBe('/')
    expect(basePath('')).toBe('/')
    expect(basePath('proxy/8081/')).toBe('/')
  })

  it('tells a proxied page from an instance root', () => {
    expect(isProxied('/')).toBe(false)
    expect(isProxied('/index.html')).toBe(false)
    expect(isProxied('/proxy/8081/')).toBe(true)
  })
})

describe('socket options', () => {
  it('at "/" keeps polling then upgrade, on /socket.io', () => {
    const o = socketOptions('/')
    expect(o.path).toBe('/socket.io')
    expect(o.transports).toBeUndefined()
    expect(o.withCredentials).toBe(true)
  })

  it('under a proxy prefix uses the prefixed path and websocket only', () => {
    expect(socketOptions('/proxy/8081/')).toMatchObject({ path: '/proxy/8081/socket.io', transports: ['websocket'] })
    expect(socketOptions('/notifylab/index.html')).toMatchObject({ path: '/notifylab/socket.io', transports: ['websocket'] })
  })

  it('reconnects with jittered backoff that socket.io-client takes up', () => {
    expect(socketOptions('/')).toMatchObject(RECONNECT)
    const s = io('http://127.0.0.1:9', { ...socketOptions('/proxy/8081/'), autoConnect: false })
    try {
      expect(s.io.reconnection()).toBe(true)
      expect(s.io.reconnectionDelay()).toBe(500)
      expect(s.io.reconnectionDelayMax()).toBe(5000)
      expect(s.io.randomizationFactor()).toBe(0.5)
      expect(s.io.opts.path).toBe('/proxy/8081/socket.io')
    } finally {
      s.close()
    }
  })
})

describe('connectSocket', () => {
  afterEach(() => vi.unstubAllGlobals())

  it('follows the page location and keeps the caller\'s auth', () => {
    vi.stubGlobal('location', new URL('http://127.0.0.1:9/proxy/8081/'))
    const auth = (cb) => cb({ last_id: '7-0' })
    const s = connectSocket({ auth, autoConnect: false })
    try {
      expect(s.io.uri).toBe('http://127.0.0.1:9')
      expect(s.io.opts).toMatchObject({ path: '/proxy/8081/socket.io', transports: ['websocket'] })
      expect(s.auth).toBe(auth)
    } finally {
      s.close()
    }
  })
})

describe('REST URLs', () => {
  function recordingFetch() {
    const urls = []
    const fetchImpl = async (url) => {
      urls.push(url)
      return { ok: true, status: 200, text: async () => '{}' }
    }
    return { urls, fetchImpl }
  }

  it('start from the base path', async () => {
    for (const [base, want] of [
      ['/', '/api/me'],
      ['/proxy/8081/', '/proxy/8081/api/me'],
    ]) {
      const { urls, fetchImpl } = recordingFetch()
      const api = createApi(fetchImpl, base)
      await api.me()
      await api.inbox({ after: '5-0', limit: 10 })
      await api.cancelOperation('op 1')
      expect(urls).toEqual([want, `${base}api/inbox?after=5-0&limit=10`, `${base}api/operations/op%201/cancel`])
    }
  })

  it('default to "/" outside a browser', async () => {
    const { urls, fetchImpl } = recordingFetch()
    await createApi(fetchImpl).kinds()
    expect(urls).toEqual(['/api/kinds'])
  })
})
