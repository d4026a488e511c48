import { useCallback, useEffect, useRef, useState } from 'react'
import { deviceName, formatAgo, formatTime } from '../lib/format.js'

export const SESSIONS_REFRESH_MS = 3000

export default function SessionsPanel({ api, sid, connection, onUnauthorized, onRevokeSelf, onRevokedSelf }) {
  const [sessions, setSessions] = useState(null)
  const [error, setError] = useState(null)
  const [busyId, setBusyId] = useState(null)
  const unauthorized = useRef(onUnauthorized)
  unauthorized.current = onUnauthorized

  const refresh = useCallback(async () => {
    try {
      const res = await api.sessions()
      setSessions(res.sessions || [])
      setError(null)
    } catch (e) {
      if (e.status === 401) unauthorized.current && unauthorized.current()
      else setError(e.message)
    }
  }, [api])

  useEffect(() => {
    refresh()
    const t = setInterval(refresh, SESSIONS_REFRESH_MS)
    return () => clearInterval(t)
  }, [refresh])

  // Refresh when this tab (re)connects or moves to another instance.
  useEffect(() => {
    if (connection.status === 'connected') refresh()
  }, [connection.status, connection.instance, sid, refresh])

  async function revoke(s) {
    setBusyId(s.id)
    if (s.current && onRevokeSelf) onRevokeSelf()
    try {
      await api.revokeSession(s.id)
      if (s.current) {
        if (onRevokedSelf) onRevokedSelf()
        return
      }
    } catch (e) {
      if (e.status === 401) unauthorized.current && unauthorized.current()
      else setError(e.message)
    } finally {
      setBusyId(null)
    }
    refresh()
  }

  const now = Date.now()
  return (
    <section className="card sessions" aria-labelledby="sessions-title">
      <div className="card-head">
        <h2 id="sessions-title">Sessions</h2>
        <button type="button" className="btn small" onClick={refresh}>
          Refresh
        </button>
      </div>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      {!sessions ? (
        <p className="empty">Loading…</p>
      ) : sessions.length === 0 ? (
        <p className="empty">No sessions.</p>
      ) : (
        <ul className="session-list" aria-label="Sessions">
          {sessions.map((s) => {
            const name = deviceName(s.device)
            return (
              <li
                key={s.id}
                className={`session ${s.current ? 'current' : ''}`}
                data-testid="session"
                data-id={s.id}
                data-current={s.current ? 'true' : 'false'}
              >
                <div className="session-head">
                  <strong title={s.device}>{name}</strong>
                  {s.current && <span className="tag">this session</span>}
                  <span className="spacer" />
                  <button
                    type="button"
                    className="btn small danger-outline"
                    disabled={busyId === s.id}
                    onClick={() => revoke(s)}
                    aria-label={s.current ? `Revoke this session (${name})` : `Revoke session ${name} ${String(s.id).slice(0, 8)}`}
                  >
                    {s.current ? 'Sign out' : 'Revoke'}
                  </button>
                </div>
                <div className="muted small">
                  signed in {formatTime(s.created)} · last seen {formatAgo(s.last_seen, now)}
                </div>
                {(s.sockets || []).length === 0 ? (
                  <div className="muted small">no live connection</div>
                ) : (
                  <ul className="socket-list" aria-label={`Connections of ${name}`}>
                    {s.sockets.map((k) => {
                      const mine = sid && k.sid === sid
                      return (
                        <li
                          key={k.sid}
                          data-testid="socket"
                          data-sid={k.sid}
                          data-instance={k.instance}
                          data-this-tab={mine ? 'true' : 'false'}
                          className={mine ? 'mine' : ''}
                        >
                          {mine && <span className="tag">this tab</span>}
                          <span className="pill">instance {k.instance}</span>
                          <span className="pill" title="transport when it connected">{k.transport || '?'}</span>
                          <span className="muted small">since {formatTime(k.connected_at)}</span>
                        </li>
                      )
                    })}
                  </ul>
                )}
              </li>
            )
          })}
        </ul>
      )}
    </section>
  )
}
