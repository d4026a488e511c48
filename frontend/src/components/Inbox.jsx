import { useState } from 'react'
import { isPublished, newestId, unreadCount, unreadIds } from '../lib/inbox.js'
import { formatTime, shortId, typeLabel } from '../lib/format.js'

function isoTime(ts) {
  const d = new Date(Number(ts) || 0)
  return Number.isNaN(d.getTime()) ? '' : d.toISOString()
}

function text(value) {
  return typeof value === 'string' ? value : ''
}

/** A published notification's title (its message repeats it; the type if neither). */
function titleOf(n) {
  return text(n.title) || text(n.message) || String(n.type)
}

/** How a row is named to assistive technology (its Mark read button). */
function itemLabel(n) {
  if (isPublished(n)) return `${n.type} ${titleOf(n)}`
  return `${typeLabel(n.type).toLowerCase()} ${n.kind || ''} ${shortId(n.operation)}`
}

// An operation's outcome or restart: what happened, to which operation.
function OperationBody({ n }) {
  return (
    <>
      <div className="notif-title">
        <strong>{typeLabel(n.type)}</strong> {n.kind} <code>{shortId(n.operation)}</code>
      </div>
      {n.message && <div className="notif-msg">{n.message}</div>}
    </>
  )
}

// A notification a backend published for the user (POST /api/publish).
function PublishedBody({ n }) {
  const body = text(n.body)
  return (
    <>
      <div className="notif-title">
        <strong data-testid="notification-title">{titleOf(n)}</strong>{' '}
        <span className="tag notif-type" data-testid="notification-type">
          {n.type}
        </span>
      </div>
      {body && (
        <div className="notif-msg" data-testid="notification-body">
          {body}
        </div>
      )}
    </>
  )
}

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
            const published = isPublished(n)
            const kind = published ? 'published' : `t-${String(n.type).replace('operation.', '')}`
            return (
              <li
                key={n.id}
                className={`notif ${isUnread ? 'unread' : ''} ${kind}`}
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
                  {published ? <PublishedBody n={n} /> : <OperationBody n={n} />}
                  <time className="muted small" dateTime={isoTime(n.ts)}>
                    {formatTime(n.ts)}
                  </time>
                </div>
                {isUnread && (
                  <button
                    type="button"
                    className="btn tiny"
                    onClick={() => markRead(n.id)}
                    aria-label={`Mark read up to ${itemLabel(n)} ${n.id}`}
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
