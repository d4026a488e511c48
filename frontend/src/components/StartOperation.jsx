import { useEffect, useMemo, useState } from 'react'
import { buildParams, initialValues, inputStep } from '../lib/params.js'
import { fieldKey } from '../lib/format.js'

export default function StartOperation({ api, client }) {
  const [kinds, setKinds] = useState(null)
  const [loadError, setLoadError] = useState(null)
  const [kindName, setKindName] = useState('')
  const [values, setValues] = useState({})
  const [errors, setErrors] = useState({})
  const [busy, setBusy] = useState(false)
  const [started, setStarted] = useState(null)

  useEffect(() => {
    let live = true
    api
      .kinds()
      .then((res) => {
        if (!live) return
        const list = res.kinds || []
        setKinds(list)
        if (list.length) {
          setKindName(list[0].name)
          setValues(initialValues(list[0]))
        }
      })
      .catch((e) => live && setLoadError(e.message))
    return () => {
      live = false
    }
  }, [api])

  const kind = useMemo(() => (kinds || []).find((k) => k.name === kindName), [kinds, kindName])

  function chooseKind(name) {
    setKindName(name)
    setValues(initialValues((kinds || []).find((k) => k.name === name)))
    setErrors({})
  }

  async function submit(e) {
    e.preventDefault()
    if (!kind || !client) return
    setBusy(true)
    setErrors({})
    setStarted(null)
    try {
      const op = await client.startOperation(kind.name, buildParams(kind, values))
      setStarted(op)
    } catch (err) {
      const key = fieldKey(err.field)
      setErrors(key ? { [key]: err.message } : { _form: err.message })
    } finally {
      setBusy(false)
    }
  }

  if (loadError) return <p className="error" role="alert">Could not load operation kinds: {loadError}</p>
  if (!kinds) return <p className="muted">Loading operation kinds…</p>

  return (
    <form className="start-form" onSubmit={submit} aria-label="Start an operation" noValidate>
      <div className="field wide">
        <label htmlFor="op-kind">Operation kind</label>
        <select
          id="op-kind"
          value={kindName}
          onChange={(e) => chooseKind(e.target.value)}
          aria-invalid={errors.kind ? 'true' : undefined}
          aria-describedby={errors.kind ? 'op-kind-error' : kind?.description ? 'op-kind-help' : undefined}
        >
          {kinds.map((k) => (
            <option key={k.name} value={k.name}>
              {k.title || k.name}
            </option>
          ))}
        </select>
        {kind?.description && (
          <p className="hint" id="op-kind-help">
            {kind.description}
          </p>
        )}
        {errors.kind && (
          <p className="field-error" id="op-kind-error" role="alert">
            {errors.kind}
          </p>
        )}
      </div>
      {kind &&
        Object.entries(kind.params || {}).map(([name, spec]) => {
          const id = `param-${name}`
          const err = errors[name]
          return (
            <div className="field" key={name}>
              <label htmlFor={id}>
                {name}
                {spec.optional && <span className="muted"> (optional)</span>}
              </label>
              <input
                id={id}
                name={name}
                type="number"
                inputMode={spec.type === 'int' ? 'numeric' : 'decimal'}
                step={inputStep(spec)}
                min={spec.min ?? undefined}
                max={spec.max ?? undefined}
                placeholder={spec.optional ? 'off' : spec.default !== undefined ? String(spec.default) : ''}
                value={values[name] ?? ''}
                onChange={(e) => setValues((v) => ({ ...v, [name]: e.target.value }))}
                aria-invalid={err ? 'true' : undefined}
                aria-describedby={`${id}-help${err ? ` ${id}-error` : ''}`}
                data-testid={`param-${name}`}
              />
              <p className="hint" id={`${id}-help`}>
                {spec.help}
                {spec.min !== undefined && spec.max !== undefined && ` (${spec.min}–${spec.max})`}
              </p>
              {err && (
                <p className="field-error" id={`${id}-error`} role="alert" data-testid={`error-${name}`}>
                  {err}
                </p>
              )}
            </div>
          )
        })}
      <div className="field wide actions">
        <button type="submit" className="btn primary" disabled={busy || !client}>
          {busy ? 'Starting…' : 'Start operation'}
        </button>
        {errors._form && (
          <p className="field-error" role="alert">
            {errors._form}
          </p>
        )}
        {started && (
          <p className="muted small" role="status">
            Started {started.kind} <code>{String(started.id).slice(0, 8)}</code>
          </p>
        )}
      </div>
    </form>
  )
}
