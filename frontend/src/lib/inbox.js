// Inbox state, kept as plain immutable data so it can be tested without a DOM.
//
// - items: notifications, newest first, at most one per id (stream id order).
// - lastId: the newest id this client has actually received. It is what the
//   Socket.IO auth payload sends on every (re)connect, so the server replays
//   exactly what came after it. It only moves forward.
// - base: the server's unread count `unread` as of stream id `id` (from hello,
//   GET /api/inbox, POST /api/inbox/read or an `inbox:read` event).
//   Notifications newer than base.id arrived after that count and are unread.
//   The server marks read with a cursor (`up_to`), so the unread ones are
//   always the newest ones.
import { compareIds, isId, maxId } from './ids.js'

export const DEFAULT_MAX_ITEMS = 500

export function emptyInbox(maxItems = DEFAULT_MAX_ITEMS) {
  return { items: [], lastId: null, base: { unread: 0, id: null, known: false }, maxItems }
}

/**
 * Merge notifications (any order, possibly overlapping what we have) into the
 * inbox. Duplicates (same id) are dropped, the result is newest first.
 * Returns the same object when nothing changed.
 */
export function addNotifications(state, notifications) {
  const list = Array.isArray(notifications) ? notifications : [notifications]
  const seen = new Set(state.items.map((n) => n.id))
  const fresh = []
  for (const n of list) {
    if (!n || !isId(n.id) || seen.has(n.id)) continue
    seen.add(n.id)
    fresh.push(n)
  }
  if (fresh.length === 0) return state
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
  return { ...state, items, lastId: maxId(state.lastId, fresh[0].id) }
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
  const id = maxId(up_to, state.base.id, state.items.length ? state.items[0].id : null)
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

/** Ids of the notifications shown as unread (the newest `unreadCount`). */
export function unreadIds(state) {
  const n = Math.min(unreadCount(state), state.items.length)
  return new Set(state.items.slice(0, n).map((x) => x.id))
}

/** The `up_to` for "mark all read": the newest id we hold (null if none). */
export function newestId(state) {
  return state.items.length ? state.items[0].id : null
}
