import { useEffect, useState } from 'react'

const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  unavailable: 'Service unavailable',
  refused: 'Connection refused',
  closed: 'Disconnected',
}

/** Whole seconds until `at` (a Date.now() value), ticking once a second; null without `at`. */
function useSecondsUntil(at) {
  const [now, setNow] = useState(() => Date.now())
  useEffect(() => {
    if (!at) return undefined
    setNow(Date.now())
    const id = setInterval(() => setNow(Date.now()), 1000)
    return () => clearInterval(id)
  }, [at])
  return at ? Math.max(0, Math.ceil((at - now) / 1000)) : null
}

export default function ConnectionStrip({ connection }) {
  const { status, instance, transport, attempt, error, retryAt } = connection
  const retryIn = useSecondsUntil(status === 'unavailable' ? retryAt : null)
  return (
    <div
      className={`connection ${status}`}
      data-testid="connection"
      data-status={status}
      data-instance={instance || ''}
      data-transport={transport || ''}
      role="status"
      aria-live="polite"
      aria-label="Connection"
    >
      <span className="dot" aria-hidden="true" />
      <span className="conn-label">{LABELS[status] || status}</span>
      {status === 'connected' && (
        <>
          <span className="pill" title="Server instance this tab is connected to">
            instance <strong data-testid="instance">{instance || '…'}</strong>
          </span>
          <span className="pill" title="Socket.IO transport">
            <span data-testid="transport">{transport || '…'}</span>
          </span>
        </>
      )}
      {status === 'reconnecting' && attempt > 0 && <span className="muted small">attempt {attempt}</span>}
      {status === 'unavailable' && retryIn !== null && ' '}
      {status === 'unavailable' && retryIn !== null && (
        <span className="muted small" data-testid="retry-in" title={error || undefined}>
          — retrying in {retryIn} s
        </span>
      )}
      {status === 'refused' && error && <span className="muted small">{error}</span>}
    </div>
  )
}
