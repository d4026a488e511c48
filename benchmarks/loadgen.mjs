// A Socket.IO load generator: holds thousands of websocket sockets in one Node process.
//
//   node benchmarks/loadgen.mjs < spec.json
//
// spec: {"urls": [...], "tokens": [...], "count": N, "timeout": seconds, "offset": 0, "retry": false,
//        "cookie": false}
// With "cookie", each socket also carries its session as the browser does, in the login cookie
// (notifylab_session), which a load balancer hashes to pick the socket's instance.
// With "retry", a connect refused with "service unavailable", or failed with "websocket
// error" (the 503 a full instance answers before the upgrade, or the 429 to an address
// opening sockets too fast), is tried again after a full-jitter backoff, as notifylab's
// clients do ("retried" counts those attempts).
// Socket i (numbered from `offset`, so several processes can share one token list)
// connects to urls[i % urls.length] with auth {session: tokens[i % tokens.length]}.
// The first `count` sockets connect all at once (count may be 0). It prints one
// JSON line per event on stdout:
//   {"event": "storm", "count", "connected", "hellos", "failed", "unanswered", "errors",
//    "first_ms", "all_ms", "p50_ms", "p99_ms"}
// then holds the sockets and records every notification (id, prev, ts, receive time).
// Commands on stdin, one per line:
//   "connect N": N more sockets at once; prints {"event": "batch", ...} (the storm's
//                fields, times from the command) when each got hello, an error or timed out;
//   "status":    prints {"event": "status", "sockets", "connected", "dropped", "drop_reasons"}
//                (dropped: welcomed, then disconnected);
//   "report":    prints {"event": "report", ...} with each socket's received ids and latencies,
//                and whether it is connected (connected_each);
//   "reset":     forgets the received notifications;
//   "quit":      disconnects everything and exits.
// Node's socket.io-client is installed by `cd frontend && npm ci`.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";
import readline from "node:readline";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "frontend", "package.json"));
const { io } = require("socket.io-client");

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// One iterator over stdin for the spec and the commands after it: leaving a
// `for await` over the interface closes it, and the commands were never read.
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextLine() {
  const r = await lines.next();
  return r.done ? null : r.value;
}

async function readSpec() {
  const chunks = [];
  let line;
  while ((line = await nextLine()) !== null && line.trim() !== "") chunks.push(line);
  return { spec: JSON.parse(chunks.join("\n")) };
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

const { spec } = await readSpec();
const offset = spec.offset ?? 0;
const sockets = [];
const received = []; // per socket: [id, prev, latency ms]
let dropped = 0; // sockets that were welcomed, then disconnected
const dropReasons = {}; // why, as socket.io-client says

// Opens `count` sockets at once; resolves with their figures once each got
// hello or connect_error, or after spec.timeout.
async function connectMany(count) {
  const helloMs = [];
  const errors = {};
  let failed = 0;
  let retried = 0;
  const t0 = performance.now();
  await new Promise((resolve) => {
    if (count === 0) return resolve();
    let settled = 0;
    const settle = () => {
      settled += 1;
      if (settled === count) resolve();
    };
    const timer = setTimeout(resolve, spec.timeout * 1000);
    timer.unref();
    for (let k = 0; k < count; k++) {
      const i = offset + sockets.length;
      const socket = io(spec.urls[i % spec.urls.length], {
        transports: ["websocket"],
        auth: { session: spec.tokens[i % spec.tokens.length] },
        ...(spec.cookie ? { extraHeaders: { Cookie: `notifylab_session=${spec.tokens[i % spec.tokens.length]}` } } : {}),
        reconnection: false,
        forceNew: true,
        timeout: spec.timeout * 1000,
      });
      const mine = [];
      received.push(mine);
      let done = false;
      let attempt = 0; // refusals retried so far (spec.retry)
      socket.on("hello", () => {
        if (!done) {
          done = true;
          helloMs.push(performance.now() - t0);
          settle();
        }
      });
      socket.on("notification", (note) => {
        mine.push([note.id, note.prev ?? null, Date.now() - note.ts]);
      });
      socket.on("connect_error", (err) => {
        const message = String(err && err.message);
        if (!done && spec.retry && (message.includes("service unavailable") || message === "websocket error")) {
          // As the React and Python clients do: retry a refusal (or the 503
          // an instance answers before the upgrade while it is full, or its
          // 429 to an address opening sockets too fast, which
          // socket.io-client both reports as "websocket error") after a
          // full-jitter backoff, 1 s doubling to at most 20 s.
          retried += 1;
          const delay = Math.floor(Math.random() * Math.min(20000, 1000 * 2 ** attempt));
          attempt += 1;
          setTimeout(() => {
            if (!done) socket.connect();
          }, delay).unref();
          return;
        }
        if (!done) {
          done = true;
          failed += 1;
          const key = String(err && err.message).slice(0, 80);
          errors[key] = (errors[key] || 0) + 1;
          settle();
        }
      });
      socket.on("disconnect", (reason) => {
        if (done && !quitting) {
          dropped += 1;
          dropReasons[reason] = (dropReasons[reason] || 0) + 1;
        }
      });
      sockets.push(socket);
    }
  });
  helloMs.sort((a, b) => a - b);
  return {
    count,
    connected: sockets.filter((s) => s.connected).length,
    hellos: helloMs.length,
    failed,
    retried,
    unanswered: count - helloMs.length - failed,
    errors,
    first_ms: helloMs[0] ?? null,
    p50_ms: pct(helloMs, 50),
    p99_ms: pct(helloMs, 99),
    all_ms: helloMs.length ? helloMs[helloMs.length - 1] : null,
  };
}

let quitting = false;
out({ event: "storm", ...(await connectMany(spec.count)) });

for (let line; (line = await nextLine()) !== null; ) {
  const [command, arg] = line.trim().split(/\s+/);
  if (command === "connect") {
    out({ event: "batch", ...(await connectMany(Number(arg))) });
  } else if (command === "status") {
    const connected = sockets.filter((s) => s.connected).length;
    out({ event: "status", sockets: sockets.length, connected, dropped, drop_reasons: dropReasons });
  } else if (command === "report") {
    const each = sockets.map((s) => s.connected);
    out({ event: "report", connected: each.filter(Boolean).length, connected_each: each, received });
  } else if (command === "reset") {
    for (const r of received) r.length = 0;
    out({ event: "reset" });
  } else if (command === "quit") {
    break;
  }
}
quitting = true;
for (const s of sockets) s.disconnect();
setTimeout(() => process.exit(0), 200);
