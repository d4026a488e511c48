// @vitest-environment happy-dom
import { afterEach, describe, expect, it, vi } from 'vitest'
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react'
import Inbox from '../src/components/Inbox.jsx'
import OperationList from '../src/components/OperationList.jsx'
import ConnectionStrip from '../src/components/ConnectionStrip.jsx'
import { addNotifications, emptyInbox, setBaseline } from '../src/lib/inbox.js'
import { emptyOperations, operationsReducer } from '../src/lib/operations.js'
import { note } from './helpers.js'

afterEach(cleanup)

describe('<Inbox>', () => {
  it('renders each notification once, newest first, with the unread badge', () => {
    let inbox = addNotifications(emptyInbox(), [note('1-0'), note('10-0'), note('9-0'), note('10-0')])
    inbox = setBaseline(inbox, { unread: 2, last_id: '10-0' })
    const client = { markRead: vi.fn(async () => {}) }
    render(<Inbox inbox={inbox} loaded client={client} />)
    const rows = screen.getAllByTestId('notification')
    expect(rows.map((r) => r.dataset.id)).toEqual(['10-0', '9-0', '1-0'])
    expect(rows.map((r) => r.dataset.unread)).toEqual(['true', 'true', 'false'])
    expect(screen.getByTestId('unread').textContent).toBe('2')
    fireEvent.click(screen.getByRole('button', { name: 'Mark all read' }))
    expect(client.markRead).toHaveBeenCalledWith('10-0')
    fireEvent.click(within(rows[1]).getByRole('button', { name: /Mark read/ }))
    expect(client.markRead).toHaveBeenCalledWith('9-0')
  })
})

describe('<OperationList>', () => {
  it('shows state, progress and a cancel button for unfinished operations', () => {
    const T = 1_700_000_000_000
    const ops = operationsReducer(emptyOperations(), {
      type: 'snapshot',
      operations: [
        { id: 'aaaaaaaa1', kind: 'count', state: 'running', step: 2, steps: 4, progress: 0.5, message: 'step 2 of 4', created: T, updated: T },
        { id: 'bbbbbbbb2', kind: 'count', state: 'succeeded', step: 4, steps: 4, progress: 1, message: 'done', created: T - 1, updated: T },
      ],
    })
    const client = { cancelOperation: vi.fn(async () => {}) }
    render(<OperationList operations={ops} client={client} />)
    const rows = screen.getAllByTestId('operation')
    expect(rows.map((r) => r.dataset.state)).toEqual(['running', 'succeeded'])
    expect(within(rows[0]).getByRole('progressbar').getAttribute('aria-valuenow')).toBe('50')
    expect(within(rows[1]).queryByRole('button', { name: /Cancel/ })).toBeNull()
    fireEvent.click(within(rows[0]).getByRole('button', { name: /Cancel operation count aaaaaaaa/ }))
    expect(client.cancelOperation).toHaveBeenCalledWith('aaaaaaaa1')
  })
})

describe('<ConnectionStrip>', () => {
  it('exposes instance, status and transport', () => {
    render(<ConnectionStrip connection={{ status: 'connected', instance: 'b', transport: 'websocket', attempt: 0 }} />)
    const strip = screen.getByTestId('connection')
    expect(strip.dataset).toMatchObject({ status: 'connected', instance: 'b', transport: 'websocket' })
    cleanup()
    render(<ConnectionStrip connection={{ status: 'reconnecting', instance: 'b', transport: null, attempt: 2 }} />)
    expect(screen.getByTestId('connection').textContent).toMatch(/Reconnecting…/)
  })
})
