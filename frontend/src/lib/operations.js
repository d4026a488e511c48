// Operation state as a reducer over plain data (testable without a DOM).
//
// Operations come from three sources that can arrive in any order:
//  - snapshots: GET /api/operations, the `operations` of `hello`, the answer
//    to start/cancel (a full op record with an `updated` time),
//  - notifications: {id, operation, kind, state, step, steps, progress,
//    message, ts}, ordered by their stream id. Only "operation.*" ones with a
//    non-empty `operation` apply; published notifications (operation "") are
//    for the inbox only.
// Rules: a notification applies only if its id is newer than the last one
// applied to that operation; a snapshot applies only if it is not older than
// what we show; a finished operation (succeeded, failed, cancelled) never goes
// back to an unfinished state.
import { compareIds } from './ids.js'

export const STATES = ['queued', 'running', 'restarted', 'succeeded', 'failed', 'cancelled']
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled'])

export function isTerminal(state) {
  return TERMINAL.has(state)
}

export function emptyOperations() {
  return { byId: {} }
}

const TYPE_TO_STATE = {
  'operation.queued': 'queued',
  'operation.started': 'running',
  'operation.progress': 'running',
  'operation.restarted': 'restarted',
  'operation.succeeded': 'succeeded',
  'operation.failed': 'failed',
  'operation.cancelled': 'cancelled',
}

function clampProgress(p) {
  const x = Number(p)
  if (!Number.isFinite(x)) return 0
  return Math.min(1, Math.max(0, x))
}

// Both times must be epoch milliseconds to be compared (guards against a
// server that sends seconds in one place).
function isMs(t) {
  return Number.isFinite(Number(t)) && Number(t) > 1e12
}

function mergeSnapshot(prev, op) {
  if (!op || op.id === undefined || op.id === null) return prev
  const next = { ...op, progress: clampProgress(op.progress) }
  const opUpdated = Number(op.updated) || 0
  if (!prev) return { ...next, notifId: null, snapUpdated: opUpdated }
  if (isTerminal(prev.state) && !isTerminal(op.state)) return prev
  const prevUpdated = Number(prev.updated) || 0
  if (opUpdated < prevUpdated && !(isTerminal(op.state) && !isTerminal(prev.state))) return prev
  return { ...prev, ...next, notifId: prev.notifId, snapUpdated: opUpdated }
}

function applyNotification(prev, n) {
  const id = n.operation
  if (id === undefined || id === null) return prev
  if (prev && prev.notifId && compareIds(n.id, prev.notifId) <= 0) return prev
  const state = n.state || TYPE_TO_STATE[n.type] || (prev && prev.state) || 'queued'
  if (prev && isTerminal(prev.state) && !isTerminal(state)) return { ...prev, notifId: n.id }
  // A notification older than the snapshot we show (e.g. replayed after
  // `hello`) only moves the cursor.
  if (prev && isMs(n.ts) && isMs(prev.snapUpdated) && Number(n.ts) < Number(prev.snapUpdated)) {
    return { ...prev, notifId: n.id }
  }
  const base = prev || {
    id,
    user: n.user,
    kind: n.kind,
    params: {},
    attempts: 0,
    created: n.ts,
    error: null,
  }
  const next = {
    ...base,
    kind: n.kind ?? base.kind,
    state,
    notifId: n.id,
    updated: Math.max(Number(base.updated) || 0, Number(n.ts) || 0),
  }
  if (n.step !== undefined && n.step !== null) next.step = n.step
  if (n.steps !== undefined && n.steps !== null) next.steps = n.steps
  if (n.progress !== undefined && n.progress !== null) next.progress = clampProgress(n.progress)
  if (n.message !== undefined && n.message !== null) next.message = n.message
  if (state === 'succeeded') next.progress = 1
  if (n.error !== undefined) next.error = n.error
  if (state === 'failed' && n.message && !next.error) next.error = n.message
  return next
}

/** Whether a notification is about an operation (and may update its card). */
export function isOperationNotification(n) {
  if (!n || typeof n.type !== 'string' || !n.type.startsWith('operation.')) return false
  return n.operation !== undefined && n.operation !== null && n.operation !== ''
}

export function operationsReducer(state, action) {
  switch (action.type) {
    case 'snapshot': {
      // A list of full records (REST list, hello). Merge, never drop: an
      // operation we learnt about from a notification stays.
      const byId = { ...state.byId }
      let changed = false
      for (const op of action.operations || []) {
        const merged = mergeSnapshot(byId[op.id], op)
        if (merged !== byId[op.id]) {
          byId[op.id] = merged
          changed = true
        }
      }
      return changed ? { ...state, byId } : state
    }
    case 'upsert': {
      const prev = state.byId[action.operation?.id]
      const merged = mergeSnapshot(prev, action.operation)
      return merged === prev ? state : { ...state, byId: { ...state.byId, [merged.id]: merged } }
    }
    case 'notification': {
      const list = Array.isArray(action.notifications) ? action.notifications : [action.notification]
      let byId = state.byId
      const sorted = list.filter(Boolean).slice().sort((a, b) => compareIds(a.id, b.id))
      for (const n of sorted) {
        // Published notifications (any type outside "operation.", with
        // operation "") belong to the inbox only: never an operation card.
        if (!isOperationNotification(n)) continue
        const prev = byId[n.operation]
        const next = applyNotification(prev, n)
        if (next !== prev) byId = { ...byId, [n.operation]: next }
      }
      return byId === state.byId ? state : { ...state, byId }
    }
    case 'reset':
      return emptyOperations()
    default:
      return state
  }
}

/** Operations newest first (by creation time, then id). */
export function operationList(state) {
  return Object.values(state.byId).sort((a, b) => {
    const d = (Number(b.created) || 0) - (Number(a.created) || 0)
    if (d !== 0) return d
    return String(b.id).localeCompare(String(a.id))
  })
}

/** Whether the operation can still be cancelled. */
export function canCancel(op) {
  return !!op && !isTerminal(op.state)
}
