// Inbox state, kept as plain immutable data so it can be tested without a DOM.
//
// The inbox rule (the same one as the server's notifylab/protocol.py,
// INBOX_TYPES and is_inbox_item): every notification is received (operation
// cards need the progress), but only inbox items are listed and counted as
// unread: an operation's outcome (succeeded, failed, cancelled), its restarts,
// and any type outside "operation." (published notifications, such as
// "billing.invoice"). Queued, started and progress only update the card.
//
// - items: inbox items (isInboxItem), newest first, at most one per id
//   (stream id order).
// - lastId: the newest id this client has actually received, inbox item or
//   not. It is what the Socket.IO auth payload sends on every (re)connect, so
//   the server replays exactly what came after it. It only moves forward.
// - base: the server's unread count `unread` as of stream id `id` (from hello,
//   GET /api/inbox, POST /api/inbox/read or an `inbox:read` event). The
//   server counts inbox items only, by the same rule; inbox items newer than
//   base.id arrived after that count and are unread (a replay up to hello's
//   last_id is in hello's count already). The server marks read with a
//   cursor (`up_to`), so the unread ones are always the newest ones.
import { compareIds, isId, maxId } from './ids.js'

/** Operation types that are inbox items (protocol.py INBOX_TYPES). */
export const INBOX_TYPES = new Set([
  'operation.succeeded',
  'operation.failed',
  'operation.cancelled',
  'operation.restarted',
])
export const OPERATION_TYPE_PREFIX = 'operation.'

/**
 * Whether a notification is one a person is notified of: listed in the inbox
 * and counted as unread (protocol.py is_inbox_item).
 */
export function isInboxItem(n) {
  const type = n ? n.type : undefined
  if (typeof type !== 'string' || !type) return false
  return INBOX_TYPES.has(type) || !type.startsWith(OPERATION_TYPE_PREFIX)
}

/** A published notification (not an operation's): title, body, type tag. */
export function isPublished(n) {
  return isInboxItem(n) && !n.type.startsWith(OPERATION_TYPE_PREFIX)
}

export const DEFAULT_MAX_ITEMS = 500

export function emptyInbox(maxItems = DEFAULT_MAX_ITEMS) {
  return { items: [], lastId: null, base: { unread: 0, id: null, known: false }, maxItems }
}

/**
 * Merge notifications (any order, possibly overlapping what we have) into the
 * inbox. Every valid one moves lastId forward; only inbox items are kept, and
 * duplicates (same id) are dropped. The items are newest first.
 * Returns the same object when nothing changed.
 */
export function addNotifications(state, notifications) {
  const list = Array.isArray(notifications) ? notifications : [notifications]
  const seen = new Set(state.items.map((n) => n.id))
  const fresh = []
  let lastId = state.lastId
  for (const n of list) {
    if (!n || !isId(n.id)) continue
    lastId = maxId(lastId, n.id)
    if (seen.has(n.id) || !isInboxItem(n)) continue
    seen.add(n.id)
    fresh.push(n)
  }
  if (fresh.length === 0) return lastId === state.lastId ? state : { ...state, lastId }
  let items
  const newestOld = state.items.length ? state.items[0].id : null
  fresh.sort((a, b) => compareIds(b.id, a.id))
  if (newestOld === null || compareIds(fresh[fresh.length - 1].id, newestOld) > 0) {
    // Common case: everything new is newer than what we hold.
    items = fresh.concat(state.items)
  } else {
    items = fresh.concat(state.items).sort((a, b) => compareIds(b.id, a.id))
  }
  if (items.length > state.maxItems) items = items.slice(0, state.maxItems)
  return { ...state, items, lastId }
}

/**
 * Take the server's unread count as of stream id `last_id` (hello or
 * GET /api/inbox). An older baseline than the one we hold is ignored.
 */
export function setBaseline(state, { unread, last_id }) {
  if (typeof unread !== 'number') return state
  const id = isId(last_id) ? last_id : null
  if (state.base.known && compareIds(id, state.base.id) < 0) return state
  return { ...state, base: { unread, id, known: true } }
}

/**
 * Apply a read mark (`inbox:read` event or the answer to POST /api/inbox/read):
 * the server's count is the newest truth and covers all we have received.
 */
export function applyRead(state, { up_to, unread }) {
  if (typeof unread !== 'number') return state
  const id = maxId(up_to, state.base.id, state.lastId, state.items.length ? state.items[0].id : null)
  return { ...state, base: { unread, id, known: true } }
}

function splitAtBase(state) {
  // items is newest first: those newer than base.id form a prefix.
  let i = 0
  while (i < state.items.length && compareIds(state.items[i].id, state.base.id) > 0) i++
  return i
}

/** The unread badge number. */
export function unreadCount(state) {
  return state.base.unread + splitAtBase(state)
}

/** Ids of the inbox items shown as unread (the newest `unreadCount`). */
export function unreadIds(state) {
  const n = Math.min(unreadCount(state), state.items.length)
  return new Set(state.items.slice(0, n).map((x) => x.id))
}

/**
 * The `up_to` for "mark all read": the newest id received, inbox item or not
 * (progress after the newest item is read too; null if none).
 */
export function newestId(state) {
  return maxId(state.lastId, state.items.length ? state.items[0].id : null)
}
