// The ladder's HTTP driver in Node: offers POST /api/operations or /api/publish at a rate.
//
//   node benchmarks/offer.mjs < spec.json      (ladder.py --driver node starts it)
//
// The same offer as ladder.py's Python driver (--driver python), call for call, at a
// fraction of its CPU: on two cores the Python driver took a fifth of the machine at
// 3,000 calls/s, CPU the system under test then did not have. Node's http client with
// keep-alive, at most 100 connections in all (aiohttp's default, which the Python
// driver used) and at most `in_flight` calls outstanding: a call that would pass it is
// not made and counted as skipped (the offer was not met).
//
// spec, one JSON line: {"path": "operations" | "publish", "urls": [...], "users": [[name,
// token], ...], "rate": notifications/s, "seconds": S, "per_call": notifications a call,
// "per_publish": users a publish call, "api_key": "...", "steps": N, "step_seconds": S,
// "in_flight": 128, "tick": 0.02}. It answers {"event": "ready"} and starts at the line
// "go"; at the end it prints {"event": "done", "calls", "skipped", "statuses"} (statuses:
// HTTP status or error name -> count), then exits when its stdin closes (after the
// ladder has read its CPU seconds).
import http from "node:http";
import readline from "node:readline";

const lines = readline.createInterface({ input: process.stdin });
const input = lines[Symbol.asyncIterator]();
const spec = JSON.parse((await input.next()).value);
const agent = new http.Agent({ keepAlive: true, maxSockets: 100, maxTotalSockets: 100 });
const statuses = {};
const count = (key) => {
  statuses[key] = (statuses[key] || 0) + 1;
};

function request(i) {
  const url = new URL(spec.urls[i % spec.urls.length]);
  let path, body, headers;
  if (spec.path === "operations") {
    const [, token] = spec.users[i % spec.users.length];
    path = "/api/operations";
    body = { kind: "report", params: { steps: spec.steps, step_seconds: spec.step_seconds } };
    headers = { Cookie: `notifylab_session=${token}` };
  } else {
    const first = (i * spec.per_publish) % spec.users.length;
    const names = [];
    for (let k = 0; k < spec.per_publish; k++) names.push(spec.users[(first + k) % spec.users.length][0]);
    path = "/api/publish";
    body = { users: names, type: "bench.tick", title: `tick ${i}` };
    headers = { Authorization: `Bearer ${spec.api_key}` };
  }
  const payload = JSON.stringify(body);
  return { url, path, payload, headers };
}

function call(i) {
  const { url, path, payload, headers } = request(i);
  return new Promise((resolve) => {
    const req = http.request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path,
        method: "POST",
        timeout: 30000,
        headers: { ...headers, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) },
      },
      (res) => {
        res.resume(); // read the answer through, so the connection is free again
        res.on("end", () => {
          count(String(res.statusCode));
          resolve();
        });
        res.on("error", (err) => {
          count(err.code || err.name);
          resolve();
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => {
      count(err.code || err.name || "Error");
      resolve();
    });
    req.end(payload);
  });
}

console.log(JSON.stringify({ event: "ready" }));
while ((await input.next()).value !== "go");

const pending = new Set();
const started = performance.now();
let made = 0;
let behind = 0;
for (;;) {
  const elapsed = (performance.now() - started) / 1000;
  if (elapsed >= spec.seconds) break;
  const due = Math.floor((spec.rate * elapsed) / spec.per_call) + 1;
  while (made < due) {
    if (pending.size >= spec.in_flight) {
      behind += due - made;
      made = due;
      break;
    }
    const p = call(made).then(() => pending.delete(p));
    pending.add(p);
    made += 1;
  }
  await new Promise((resolve) => setTimeout(resolve, spec.tick * 1000));
}
await Promise.all(pending);
console.log(JSON.stringify({ event: "done", calls: made - behind, skipped: behind, statuses }));
agent.destroy();
while (!(await input.next()).done);
process.exit(0);
