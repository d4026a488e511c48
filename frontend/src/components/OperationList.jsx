import { useState } from 'react'
import { canCancel, operationList } from '../lib/operations.js'
import { formatTime, percent, shortId } from '../lib/format.js'

function OperationRow({ op, client }) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState(null)
  const pct = percent(op.progress)
  const label = `${op.kind || 'operation'} ${shortId(op.id)}`

  async function cancel() {
    setBusy(true)
    setError(null)
    try {
      await client.cancelOperation(op.id)
    } catch (e) {
      setError(e.message)
    } finally {
      setBusy(false)
    }
  }

  return (
    <li
      className={`op state-${op.state}`}
      data-testid="operation"
      data-id={op.id}
      data-state={op.state}
      data-step={op.step ?? ''}
      data-steps={op.steps ?? ''}
      aria-label={`Operation ${label}`}
    >
      <div className="op-head">
        <span className="op-kind">{op.kind || 'operation'}</span>
        <code className="op-id" title={String(op.id)}>
          {shortId(op.id)}
        </code>
        <span className={`state-badge ${op.state}`} data-testid="operation-state">
          {op.state}
        </span>
        <span className="spacer" />
        {canCancel(op) && (
          <button
            type="button"
            className="btn small"
            onClick={cancel}
            disabled={busy}
            aria-label={`Cancel operation ${label}`}
          >
            Cancel
          </button>
        )}
      </div>
      <div
        className="progress"
        role="progressbar"
        aria-label={`Progress of ${label}`}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={pct}
      >
        <div className="bar" style={{ width: `${pct}%` }} />
      </div>
      <div className="op-meta">
        <span>
          step {op.step ?? 0}/{op.steps ?? '?'} · {pct}%
        </span>
        {op.attempts > 1 && <span>attempt {op.attempts}</span>}
        <span className="muted">{formatTime(op.created)}</span>
      </div>
      {op.message && (
        <p className="op-message" data-testid="operation-message">
          {op.message}
        </p>
      )}
      {op.error && op.error !== op.message && (
        <p className="field-error">{typeof op.error === 'string' ? op.error : JSON.stringify(op.error)}</p>
      )}
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
    </li>
  )
}

export default function OperationList({ operations, client }) {
  const list = operationList(operations)
  return (
    <div className="ops">
      <h3 className="sub">
        Your operations <span className="count">{list.length}</span>
      </h3>
      {list.length === 0 ? (
        <p className="empty">No operations yet. Start one above, or from another tab or notebook.</p>
      ) : (
        <ul className="op-list" aria-label="Operations">
          {list.map((op) => (
            <OperationRow key={op.id} op={op} client={client} />
          ))}
        </ul>
      )}
    </div>
  )
}
