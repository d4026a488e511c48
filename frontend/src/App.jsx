import { useCallback, useEffect, useMemo, useState } from 'react'
import { createApi } from './lib/api.js'
import AuthForm from './components/AuthForm.jsx'
import Dashboard from './components/Dashboard.jsx'

const SIGNED_OUT_MESSAGES = {
  revoked: 'This session was signed out from another device.',
  expired: 'Your session has ended. Please sign in again.',
  logout: 'You are signed out.',
  'logout-all': 'You signed out of every session.',
}

export default function App() {
  const api = useMemo(() => createApi(), [])
  const [auth, setAuth] = useState({ status: 'loading', me: null })
  const [notice, setNotice] = useState(null)

  const loadMe = useCallback(async () => {
    try {
      const me = await api.me()
      setAuth({ status: 'in', me })
    } catch (e) {
      setAuth({ status: e && e.status === 401 ? 'anon' : 'error', me: null, error: e && e.message })
    }
  }, [api])

  useEffect(() => {
    loadMe()
  }, [loadMe])

  const onSignedIn = useCallback(() => {
    setNotice(null)
    loadMe()
  }, [loadMe])

  const onSignedOut = useCallback((reason) => {
    setNotice({ reason, text: SIGNED_OUT_MESSAGES[reason] || SIGNED_OUT_MESSAGES.logout })
    setAuth({ status: 'anon', me: null })
  }, [])

  if (auth.status === 'loading') {
    return (
      <div className="center-screen" role="status" aria-live="polite">
        Loading notifylab…
      </div>
    )
  }
  if (auth.status === 'error') {
    return (
      <div className="center-screen">
        <div className="card narrow">
          <h1 className="brand">notifylab</h1>
          <p role="alert" className="error">The server cannot be reached ({auth.error}).</p>
          <button type="button" className="btn primary" onClick={loadMe}>
            Try again
          </button>
        </div>
      </div>
    )
  }
  if (auth.status === 'anon') {
    return <AuthForm api={api} onSignedIn={onSignedIn} notice={notice} />
  }
  return <Dashboard key={auth.me?.session?.id || 'me'} api={api} me={auth.me} onSignedOut={onSignedOut} />
}
