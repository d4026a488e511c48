// Notification ids are Redis stream ids, "<ms>-<seq>". They must be compared
// as two integers: as strings, "999-0" > "1000-0" and "5-10" < "5-9".

/** Parse "1732512345678-3" into [1732512345678, 3]; null for anything else. */
export function parseId(id) {
  if (typeof id !== 'string') return null
  const m = /^(\d+)-(\d+)$/.exec(id.trim())
  if (!m) return null
  return [Number(m[1]), Number(m[2])]
}

export function isId(id) {
  return parseId(id) !== null
}

/**
 * Compare two stream ids: negative if a < b, 0 if equal, positive if a > b.
 * A missing id (null/undefined) sorts before every real id.
 */
export function compareIds(a, b) {
  const pa = parseId(a)
  const pb = parseId(b)
  if (!pa && !pb) return 0
  if (!pa) return -1
  if (!pb) return 1
  if (pa[0] !== pb[0]) return pa[0] < pb[0] ? -1 : 1
  if (pa[1] !== pb[1]) return pa[1] < pb[1] ? -1 : 1
  return 0
}

/** The newest of the given ids (null if none is a valid id). */
export function maxId(...ids) {
  let best = null
  for (const id of ids.flat()) {
    if (isId(id) && (best === null || compareIds(id, best) > 0)) best = id
  }
  return best
}
