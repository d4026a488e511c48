// @vitest-environment happy-dom
import { afterEach, describe, expect, it, vi } from 'vitest'
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react'
import Inbox from '../src/components/Inbox.jsx'
import OperationList from '../src/components/OperationList.jsx'
import ConnectionStrip from '../src/components/ConnectionStrip.jsx'
import { addNotifications, emptyInbox, setBaseline } from '../src/lib/inbox.js'
import { emptyOperations, operationsReducer } from '../src/lib/operations.js'
import { item, note, published } from './helpers.js'

afterEach(cleanup)

describe('<Inbox>', () => {
  it('renders each notification once, newest first, with the unread badge', () => {
    let inbox = addNotifications(emptyInbox(), [item('1-0'), item('10-0'), item('9-0'), item('10-0')])
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

describe('<Inbox> and the inbox rule', () => {
  const T = 1_700_000_000_000
  const at = (i) => `${T + i}-0`

  it('lists outcomes and published notifications, never queued, started or progress', () => {
    let inbox = addNotifications(emptyInbox(), [
      note(at(1), { type: 'operation.queued', state: 'queued', ts: T + 1 }),
      note(at(2), { type: 'operation.started', ts: T + 2 }),
      note(at(3), { ts: T + 3 }),
      item(at(4), { ts: T + 4, message: 'report ready' }),
      published(at(5), { ts: T + 5, title: 'Invoice INV-7', body: 'Amount due: 12 EUR' }),
      note(at(6), { operation: 'op2', ts: T + 6 }),
    ])
    inbox = setBaseline(inbox, { unread: 2, last_id: at(6) })
    const client = { markRead: vi.fn(async () => {}) }
    render(<Inbox inbox={inbox} loaded client={client} />)
    const rows = screen.getAllByTestId('notification')
    expect(rows.map((r) => r.dataset.type)).toEqual(['billing.invoice', 'operation.succeeded'])
    expect(screen.getByTestId('unread').textContent).toBe('2')
    fireEvent.click(screen.getByRole('button', { name: 'Mark all read' }))
    expect(client.markRead).toHaveBeenCalledWith(at(6))
  })

  it('shows a published notification by its title, body, type and time', () => {
    const n = published(at(1), { ts: T, title: 'Invoice INV-7', body: 'Amount due: 12 EUR' })
    const inbox = setBaseline(addNotifications(emptyInbox(), [n]), { unread: 1, last_id: at(1) })
    const client = { markRead: vi.fn(async () => {}) }
    render(<Inbox inbox={inbox} loaded client={client} />)
    const row = screen.getByTestId('notification')
    expect(row.dataset).toMatchObject({ type: 'billing.invoice', unread: 'true' })
    expect(row.getAttribute('data-operation')).toBe('')
    expect(row.className).toMatch(/\bpublished\b/)
    expect(within(row).getByTestId('notification-title').textContent).toBe('Invoice INV-7')
    expect(within(row).getByTestId('notification-body').textContent).toBe('Amount due: 12 EUR')
    expect(within(row).getByTestId('notification-type').textContent).toBe('billing.invoice')
    expect(within(row).getByRole('time').getAttribute('datetime')).toBe(new Date(T).toISOString())
    // the title is not repeated from `message`, and nothing reads as an operation
    expect(row.textContent.match(/Invoice INV-7/g)).toHaveLength(1)
    expect(row.querySelector('code')).toBeNull()
    fireEvent.click(within(row).getByRole('button', { name: /Mark read up to billing.invoice Invoice INV-7/ }))
    expect(client.markRead).toHaveBeenCalledWith(at(1))
  })

  it('shows a published notification without a body or title by its type', () => {
    const n = published(at(1), { title: undefined, message: undefined, body: undefined, ts: 'garbage' })
    const inbox = addNotifications(emptyInbox(), [n])
    render(<Inbox inbox={inbox} loaded client={{ markRead: vi.fn() }} />)
    const row = screen.getByTestId('notification')
    expect(within(row).getByTestId('notification-title').textContent).toBe('billing.invoice')
    expect(within(row).queryByTestId('notification-body')).toBeNull()
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
