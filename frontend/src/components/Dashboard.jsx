import { useCallback, useEffect, useState, useSyncExternalStore } from 'react'
import { NotifyClient } from '../lib/client.js'
import { connectSocket } from '../lib/socket.js'
import ConnectionStrip from './ConnectionStrip.jsx'
import StartOperation from './StartOperation.jsx'
import OperationList from './OperationList.jsx'
import Inbox from './Inbox.jsx'
import SessionsPanel from './SessionsPanel.jsx'

const EMPTY = () => null
const NOOP_SUB = () => () => {}

export default function Dashboard({ api, me, onSignedOut }) {
  const [client, setClient] = useState(null)

  useEffect(() => {
    const c = new NotifyClient({ api, connect: connectSocket })
    c.start()
    setClient(c)
    if (typeof window !== 'undefined') window.__notifylab = c // handy in devtools
    return () => c.stop()
  }, [api])

  const state = useSyncExternalStore(client ? client.subscribe : NOOP_SUB, client ? client.getState : EMPTY)

  useEffect(() => {
    if (state && state.signedOut) onSignedOut(state.signedOut.reason)
  }, [state, onSignedOut])

  const signOut = useCallback(
    async (everywhere) => {
      if (client) client.expectSignOut(everywhere ? 'logout-all' : 'logout')
      try {
        if (everywhere) await api.logoutAll()
        else await api.logout()
      } catch {
        /* signed out anyway from this tab's point of view */
      }
      if (client) client.signOut(everywhere ? 'logout-all' : 'logout')
      else onSignedOut(everywhere ? 'logout-all' : 'logout')
    },
    [api, client, onSignedOut],
  )

  const username = state?.user?.username || state?.user || me?.user?.username

  return (
    <div className="app">
      <header className="topbar">
        <div className="brand">
          <span className="logo" aria-hidden="true" /> notifylab
        </div>
        {state && <ConnectionStrip connection={state.connection} />}
        <div className="account">
          <span className="who" data-testid="username" title="Signed in as">
            {username}
          </span>
          <button type="button" className="btn small" onClick={() => signOut(false)}>
            Sign out
          </button>
          <button type="button" className="btn small danger-outline" onClick={() => signOut(true)}>
            Sign out everywhere
          </button>
        </div>
      </header>
      {state ? (
        <main className="grid">
          <section className="card" aria-labelledby="ops-title">
            <h2 id="ops-title">Operations</h2>
            <StartOperation api={api} client={client} />
            <OperationList operations={state.operations} client={client} />
          </section>
          <Inbox inbox={state.inbox} loaded={state.inboxLoaded} client={client} />
          <SessionsPanel
            api={api}
            sid={state.connection.sid}
            connection={state.connection}
            onUnauthorized={() => client.signOut('expired')}
            onRevokeSelf={() => client.expectSignOut('logout')}
            onRevokedSelf={() => client.signOut('logout')}
          />
        </main>
      ) : (
        <div className="center-screen" role="status">
          Connecting…
        </div>
      )}
    </div>
  )
}
