import { useState } from 'react'

export default function AuthForm({ api, onSignedIn, notice }) {
  const [username, setUsername] = useState('')
  const [password, setPassword] = useState('')
  const [error, setError] = useState(null)
  const [busy, setBusy] = useState(false)

  async function submit(mode) {
    setBusy(true)
    setError(null)
    try {
      if (mode === 'register') await api.register(username.trim(), password)
      else await api.login(username.trim(), password)
      onSignedIn()
    } catch (e) {
      setError({ text: e.message, field: e.field })
    } finally {
      setBusy(false)
    }
  }

  return (
    <div className="center-screen">
      <main className="card narrow auth" aria-labelledby="auth-title">
        <h1 className="brand" id="auth-title">
          <span className="logo" aria-hidden="true" /> notifylab
        </h1>
        <p className="muted">Live operations and notifications across server instances.</p>
        {notice && (
          <div className={`banner ${notice.reason === 'revoked' ? 'warn' : 'info'}`} role="alert" data-testid="signed-out">
            {notice.text}
          </div>
        )}
        <form
          onSubmit={(e) => {
            e.preventDefault()
            submit('login')
          }}
          aria-describedby={error ? 'auth-error' : undefined}
        >
          <label htmlFor="auth-username">Username</label>
          <input
            id="auth-username"
            name="username"
            autoComplete="username"
            autoCapitalize="none"
            spellCheck="false"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
            aria-invalid={error?.field === 'username' ? 'true' : undefined}
            required
          />
          <label htmlFor="auth-password">Password</label>
          <input
            id="auth-password"
            name="password"
            type="password"
            autoComplete="current-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            aria-invalid={error?.field === 'password' ? 'true' : undefined}
            required
          />
          <p className="hint">Username: 3–32 of a–z, 0–9, _ and -. Password: at least 8 characters.</p>
          {error && (
            <p className="error" id="auth-error" role="alert">
              {error.text}
            </p>
          )}
          <div className="row">
            <button type="submit" className="btn primary" disabled={busy}>
              Sign in
            </button>
            <button type="button" className="btn" disabled={busy} onClick={() => submit('register')}>
              Create account
            </button>
          </div>
        </form>
      </main>
    </div>
  )
}
