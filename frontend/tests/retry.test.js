// Retrying a connect the server refused: socket.io-client leaves a server
// refusal alone (socket.active === false), so NotifyClient retries the
// temporary "service unavailable" one itself, with full-jitter backoff.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { NotifyClient } from '../src/lib/client.js'
import { BACKOFF, backoffDelay, isUnavailable } from '../src/lib/retry.js'
import { FakeSocket, fakeApi } from './helpers.js'

// The server's message (notifylab/server/sockets.py, UNAVAILABLE).
const UNAVAILABLE = 'service unavailable, retry in a moment'

const refusal = (message) => new Error(message)
const flush = () => Promise.resolve().then(() => Promise.resolve())

describe('backoffDelay', () => {
  const almostOne = () => 1 - Number.EPSILON

  it('stays in [0, min(cap, base * 2^attempt))', () => {
    const ceilings = [0, 1, 2, 3, 4, 5, 6, 40, 1e6].map((a) => backoffDelay(a, { random: almostOne }) + 1)
    expect(ceilings).toEqual([1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000, 20000])
    expect(BACKOFF).toEqual({ base: 1000, cap: 20000 })
    for (const a of [0, 3, 10]) expect(backoffDelay(a, { random: () => 0 })).toBe(0)
    expect(backoffDelay(3, { base: 500, cap: 30000, random: almostOne })).toBe(3999)
    expect(backoffDelay(9, { base: 500, cap: 30000, random: almostOne })).toBe(29999)
  })

  it('is jittered by the random source (full jitter)', () => {
    expect([0, 1, 2].map((a) => backoffDelay(a, { random: () => 0.5 }))).toEqual([500, 1000, 2000])
    expect([0.1, 0.25, 0.9].map((r) => backoffDelay(2, { random: () => r }))).toEqual([400, 1000, 3600])
    const samples = Array.from({ length: 500 }, () => backoffDelay(4))
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...samples)).toBeLessThan(16000)
    expect(new Set(samples).size).toBeGreaterThan(100) // not every tab at the same moment
  })

  it('treats a bad attempt as the first one', () => {
    for (const a of [-3, NaN, undefined]) expect(backoffDelay(a, { random: () => 0.5 })).toBe(500)
  })
})

describe('isUnavailable', () => {
  it('matches the server\'s outage refusal only', () => {
    expect(isUnavailable(refusal(UNAVAILABLE))).toBe(true)
    expect(isUnavailable(refusal('Service Unavailable'))).toBe(true)
    expect(isUnavailable(refusal('unauthorized: log in first'))).toBe(false)
    expect(isUnavailable(refusal('last_id is not a notification id'))).toBe(false)
    expect(isUnavailable(refusal('xhr poll error'))).toBe(false)
    expect(isUnavailable(null)).toBe(false)
    expect(isUnavailable({ message: 42 })).toBe(false)
  })
})

describe('NotifyClient retries a "service unavailable" refusal', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  // Default timers (globalThis, faked here) and a fixed jitter: delays are
  // 500, 1000, 2000... ms (half of each ceiling).
  function setup(apiOverrides = {}) {
    const api = fakeApi(apiOverrides)
    let socket
    const client = new NotifyClient({ api, random: () => 0.5, connect: (opts) => (socket = new FakeSocket(opts)) })
    client.start()
    const s = socket
    const refuse = (message) => {
      s.connected = false
      s.active = false // a server refusal: socket.io-client will not retry
      s.fire('connect_error', refusal(message))
    }
    const connects = () => s.connectCalls || 0
    return { client, api, s, refuse, connects }
  }

  it('connects again after the backoff delay, without asking for the session', () => {
    const { client, api, refuse, connects } = setup()
    refuse(UNAVAILABLE)
    expect(client.getState().connection).toMatchObject({ status: 'unavailable', error: UNAVAILABLE, attempt: 1 })
    expect(client.getState().connection.retryAt).toBe(Date.now() + 500)
    vi.advanceTimersByTime(499)
    expect(connects()).toBe(0)
    vi.advanceTimersByTime(1)
    expect(connects()).toBe(1)
    expect(client.getState().connection).toMatchObject({ status: 'reconnecting', retryAt: null })
    expect(api.calls.filter((c) => c[0] === 'me')).toHaveLength(0)
  })

  it('backs off further on each refusal in a row', () => {
    const { refuse, connects } = setup()
    const waits = []
    for (let i = 0; i < 6; i++) {
      refuse(UNAVAILABLE)
      const before = Date.now()
      for (let ms = 0; connects() === i && ms < 60_000; ms++) vi.advanceTimersByTime(1)
      waits.push(Date.now() - before)
    }
    expect(waits).toEqual([500, 1000, 2000, 4000, 8000, 10000]) // the cap (20 s) halved by the jitter
  })

  it('resets the attempt count once connected', () => {
    const { client, s, refuse, connects } = setup()
    refuse(UNAVAILABLE)
    vi.advanceTimersByTime(500)
    refuse(UNAVAILABLE)
    vi.advanceTimersByTime(1000)
    refuse(UNAVAILABLE)
    expect(client.getState().connection.retryAt).toBe(Date.now() + 2000)
    vi.advanceTimersByTime(2000)
    expect(connects()).toBe(3)
    s.active = true
    s.serverConnect('sid1', { instance: 'a', unread: 0, operations: [], last_id: null })
    expect(client.getState().connection).toMatchObject({ status: 'connected', attempt: 0, retryAt: null })
    refuse(UNAVAILABLE) // e.g. the next outage, after a restart
    expect(client.getState().connection).toMatchObject({ status: 'unavailable', attempt: 1 })
    vi.advanceTimersByTime(499)
    expect(connects()).toBe(3)
    vi.advanceTimersByTime(1)
    expect(connects()).toBe(4)
  })

  it('a "not logged in" refusal does not retry: it signs out to the login view', async () => {
    const unauthorized = Object.assign(new Error('unauthorized'), { status: 401 })
    const { client, api, refuse, connects } = setup({ me: async () => { throw unauthorized } })
    refuse('unauthorized: log in first')
    expect(client.getState().connection.status).toBe('refused')
    await flush()
    expect(api.calls.filter((c) => c[0] === 'me')).toHaveLength(1)
    expect(client.getState().signedOut).toEqual({ reason: 'expired' })
    vi.advanceTimersByTime(60_000)
    expect(connects()).toBe(0)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('any other refusal with the session still valid retries with the same backoff', async () => {
    const { client, api, refuse, connects } = setup()
    refuse('unauthorized: log in first')
    await flush()
    expect(api.calls.filter((c) => c[0] === 'me')).toHaveLength(1)
    expect(client.getState().signedOut).toBe(null)
    vi.advanceTimersByTime(499)
    expect(connects()).toBe(0)
    vi.advanceTimersByTime(1)
    expect(connects()).toBe(1)
  })

  it('stop() (unmount, sign out) cancels a scheduled retry', () => {
    const { client, refuse, connects } = setup()
    refuse(UNAVAILABLE)
    expect(vi.getTimerCount()).toBe(1)
    client.stop()
    expect(vi.getTimerCount()).toBe(0)
    vi.advanceTimersByTime(60_000)
    expect(connects()).toBe(0)
    expect(client.getState().connection).toMatchObject({ status: 'closed', retryAt: null })
  })

  it('a transport failure is left to socket.io-client\'s own reconnection', () => {
    const { client, s, connects } = setup()
    s.fire('connect_error', refusal('xhr poll error')) // s.active stays true
    expect(client.getState().connection.status).toBe('reconnecting')
    expect(vi.getTimerCount()).toBe(0)
    vi.advanceTimersByTime(60_000)
    expect(connects()).toBe(0)
  })
})
