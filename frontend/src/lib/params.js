// Turning the kind's parameter spec and the form's text values into the
// `params` object sent to the server. Validation stays the server's job: a
// value the form cannot read as a number is sent as typed, so the server's
// error (with its `field`) is what the user sees.

export function initialValues(kind) {
  const values = {}
  for (const [name, spec] of Object.entries(kind?.params || {})) {
    values[name] = spec.default === undefined || spec.default === null ? '' : String(spec.default)
  }
  return values
}

export function buildParams(kind, values) {
  const params = {}
  for (const [name, spec] of Object.entries(kind?.params || {})) {
    const raw = String(values[name] ?? '').trim()
    if (raw === '') continue // optional, or let the server apply its default
    const n = Number(raw)
    params[name] = Number.isFinite(n) ? n : raw
  }
  return params
}

export function inputStep(spec) {
  return spec && spec.type === 'int' ? 1 : 'any'
}
