const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  refused: 'Connection refused',
  closed: 'Disconnected',
}

export default function ConnectionStrip({ connection }) {
  const { status, instance, transport, attempt, error } = connection
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
      {status === 'refused' && error && <span className="muted small">{error}</span>}
    </div>
  )
}
