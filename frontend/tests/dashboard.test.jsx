// @vitest-environment happy-dom
// The dashboard shows a "service unavailable" refusal with its countdown, and
// unmounting it cancels the scheduled retry.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { act, cleanup, render, screen } from '@testing-library/react'
import { FakeSocket, fakeApi } from './helpers.js'

const sockets = []
vi.mock('../src/lib/socket.js', () => ({
  connectSocket: (opts) => {
    const s = new FakeSocket(opts)
    sockets.push(s)
    return s
  },
}))

const { default: Dashboard } = await import('../src/components/Dashboard.jsx')
const { default: ConnectionStrip } = await import('../src/components/ConnectionStrip.jsx')

beforeEach(() => {
  vi.useFakeTimers()
  sockets.length = 0
})
afterEach(() => {
  cleanup()
  vi.useRealTimers()
})

describe('<ConnectionStrip> while the service is unavailable', () => {
  it('says so and counts down to the next attempt', () => {
    render(
      <ConnectionStrip
        connection={{ status: 'unavailable', error: 'service unavailable, retry in a moment', attempt: 2, retryAt: Date.now() + 3000 }}
      />,
    )
    const strip = screen.getByTestId('connection')
    expect(strip.dataset.status).toBe('unavailable')
    expect(strip.textContent).toBe('Service unavailable — retrying in 3 s')
    act(() => vi.advanceTimersByTime(1000))
    expect(screen.getByTestId('retry-in').textContent).toBe('— retrying in 2 s')
    act(() => vi.advanceTimersByTime(5000))
    expect(screen.getByTestId('retry-in').textContent).toBe('— retrying in 0 s')
  })
})

describe('<Dashboard> and a refused connect', () => {
  const api = () => fakeApi({ sessions: async () => ({ sessions: [] }), kinds: async () => ({ kinds: [] }) })

  it('shows the retry, and unmounting cancels it', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.9) // first delay: 900 ms
    const { unmount } = render(<Dashboard api={api()} me={{ user: { username: 'alice' } }} onSignedOut={() => {}} />)
    await act(async () => {})
    expect(sockets).toHaveLength(1)
    const s = sockets[0]
    act(() => {
      s.active = false
      s.fire('connect_error', new Error('service unavailable, retry in a moment'))
    })
    expect(screen.getByTestId('connection').dataset.status).toBe('unavailable')
    expect(screen.getByTestId('retry-in').textContent).toBe('— retrying in 1 s')
    unmount()
    vi.advanceTimersByTime(60_000)
    expect(s.connectCalls || 0).toBe(0)
    Math.random.mockRestore()
  })

  it('retries while mounted', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.9)
    render(<Dashboard api={api()} me={{ user: { username: 'alice' } }} onSignedOut={() => {}} />)
    await act(async () => {})
    const s = sockets[0]
    act(() => {
      s.active = false
      s.fire('connect_error', new Error('service unavailable, retry in a moment'))
    })
    act(() => vi.advanceTimersByTime(900))
    expect(s.connectCalls).toBe(1)
    expect(screen.getByTestId('connection').dataset.status).toBe('reconnecting')
    Math.random.mockRestore()
  })
})
