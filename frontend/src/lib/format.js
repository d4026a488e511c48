// Small display helpers.

export function shortId(id) {
  const s = String(id ?? '')
  return s.length > 8 ? s.slice(0, 8) : s
}

export function formatTime(ms) {
  const n = Number(ms)
  if (!Number.isFinite(n) || n <= 0) return ''
  return new Date(n).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
}

export function formatAgo(ms, now = Date.now()) {
  const n = Number(ms)
  if (!Number.isFinite(n) || n <= 0) return ''
  const s = Math.max(0, Math.round((now - n) / 1000))
  if (s < 5) return 'just now'
  if (s < 60) return `${s} s ago`
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 48) return `${h} h ago`
  return new Date(n).toLocaleDateString()
}

export function percent(progress) {
  const p = Number(progress)
  if (!Number.isFinite(p)) return 0
  return Math.round(Math.min(1, Math.max(0, p)) * 100)
}

const TYPE_LABELS = {
  'operation.queued': 'Queued',
  'operation.started': 'Started',
  'operation.progress': 'Progress',
  'operation.restarted': 'Restarted',
  'operation.succeeded': 'Succeeded',
  'operation.failed': 'Failed',
  'operation.cancelled': 'Cancelled',
}

export function typeLabel(type) {
  return TYPE_LABELS[type] || String(type || 'Notification')
}

/** A short, human device name from a user-agent-like string. */
export function deviceName(device) {
  const d = String(device || '')
  if (!d) return 'Unknown device'
  if (/python|aiohttp|notifylab/i.test(d) && !/mozilla/i.test(d)) return d.length > 40 ? d.slice(0, 40) + '…' : d
  const browser = /Edg\//.test(d) ? 'Edge' : /Firefox\//.test(d) ? 'Firefox' : /Chrom(e|ium)\//.test(d) ? (/Headless/.test(d) ? 'Headless Chromium' : 'Chrome') : /Safari\//.test(d) ? 'Safari' : null
  const os = /Android/.test(d) ? 'Android' : /iPhone|iPad/.test(d) ? 'iOS' : /Windows/.test(d) ? 'Windows' : /Mac OS X/.test(d) ? 'macOS' : /Linux/.test(d) ? 'Linux' : null
  if (browser) return os ? `${browser} on ${os}` : browser
  return d.length > 40 ? d.slice(0, 40) + '…' : d
}

/** "params.steps" -> "steps"; "kind" -> "kind". */
export function fieldKey(field) {
  if (!field) return null
  const s = String(field)
  return s.startsWith('params.') ? s.slice('params.'.length) : s
}
