// The page is served at "/" by an instance, or under a prefix by
// jupyter-server-proxy ("/proxy/8081/", "/notifylab/"), which strips the
// prefix before the request reaches the instance. Absolute paths such as
// "/api/me" would then miss the proxy, so every URL the client builds starts
// from the directory the page was loaded from: the same directory that the
// relative asset URLs of dist/index.html (Vite `base: './'`) resolve against.

/**
 * The directory part of a location pathname, with its trailing slash:
 * "/proxy/8081/" and "/proxy/8081/index.html" give "/proxy/8081/", "/" gives "/".
 */
export function basePath(pathname) {
  const p = typeof pathname === 'string' && pathname.startsWith('/') ? pathname : '/'
  return p.slice(0, p.lastIndexOf('/') + 1)
}

/** Whether the page came through a proxy prefix rather than an instance's "/". */
export function isProxied(pathname) {
  return basePath(pathname) !== '/'
}

/** The base path of the current page ("/" outside a browser). */
export function pageBase() {
  return basePath(globalThis.location && globalThis.location.pathname)
}
