import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

// Every instance serves dist/ at "/", and JupyterLab's jupyter-server-proxy
// serves the same files under a prefix ("/proxy/8081/", "/notifylab/") that it
// strips on the way in. Relative asset URLs (`base: './'`) resolve under
// either; the API and Socket.IO paths follow the page's location (src/lib/base.js).
// In development, `npm run dev` proxies the API and Socket.IO to an instance
// started with `python -m notifylab serve --port 8081`.
const backend = process.env.NOTIFYLAB_DEV_BACKEND || 'http://127.0.0.1:8081'

export default defineConfig({
  base: './',
  plugins: [react()],
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
  },
  server: {
    port: 5173,
    proxy: {
      '/api': { target: backend, changeOrigin: false },
      '/socket.io': { target: backend, ws: true, changeOrigin: false },
    },
  },
  test: {
    environment: 'node',
    include: ['tests/**/*.test.{js,jsx}'],
  },
})
