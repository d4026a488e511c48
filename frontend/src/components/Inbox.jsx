import { useState } from 'react'
import { newestId, unreadCount, unreadIds } from '../lib/inbox.js'
import { formatTime, percent, shortId, typeLabel } from '../lib/format.js'

export default function Inbox({ inbox, loaded, client }) {
  const [error, setError] = useState(null)
  const unread = unreadCount(inbox)
  const unreadSet = unreadIds(inbox)

  async function markRead(upTo) {
    setError(null)
    try {
      await client.markRead(upTo)
    } catch (e) {
      setError(e.message)
    }
  }

  return (
    <section className="card inbox" aria-labelledby="inbox-title">
      <div className="card-head">
        <h2 id="inbox-title">
          Inbox{' '}
          <span
            className={`badge ${unread ? '' : 'zero'}`}
            data-testid="unread"
            data-count={unread}
            aria-label={`${unread} unread`}
          >
            {unread}
          </span>
        </h2>
        <button
          type="button"
          className="btn small"
          onClick={() => markRead(newestId(inbox))}
          disabled={!unread || !newestId(inbox)}
        >
          Mark all read
        </button>
      </div>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      {inbox.items.length === 0 ? (
        <p className="empty">{loaded ? 'No notifications yet.' : 'Loading…'}</p>
      ) : (
        <ol className="notif-list" aria-label="Notifications">
          {inbox.items.map((n) => {
            const isUnread = unreadSet.has(n.id)
            return (
              <li
                key={n.id}
                className={`notif ${isUnread ? 'unread' : ''} t-${String(n.type).replace('operation.', '')}`}
                data-testid="notification"
                data-id={n.id}
                data-type={n.type}
                data-operation={n.operation ?? ''}
                data-step={n.step ?? ''}
                data-state={n.state ?? ''}
                data-unread={isUnread ? 'true' : 'false'}
              >
                <span className="notif-dot" aria-hidden="true" />
                <div className="notif-body">
                  <div className="notif-title">
                    <strong>{typeLabel(n.type)}</strong> {n.kind} <code>{shortId(n.operation)}</code>
                    {n.type === 'operation.progress' && (
                      <span className="muted">
                        {' '}
                        · step {n.step}/{n.steps} · {percent(n.progress)}%
                      </span>
                    )}
                  </div>
                  {n.message && <div className="notif-msg">{n.message}</div>}
                  <time className="muted small" dateTime={new Date(Number(n.ts) || 0).toISOString()}>
                    {formatTime(n.ts)}
                  </time>
                </div>
                {isUnread && (
                  <button
                    type="button"
                    className="btn tiny"
                    onClick={() => markRead(n.id)}
                    aria-label={`Mark read up to ${typeLabel(n.type).toLowerCase()} ${n.kind || ''} ${shortId(n.operation)} ${n.id}`}
                  >
                    Mark read
                  </button>
                )}
              </li>
            )
          })}
        </ol>
      )}
    </section>
  )
}
