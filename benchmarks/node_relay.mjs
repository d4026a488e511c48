// The Node floor of benchmarks/cost.py (--floor-node): the seed's stack alone, a Node
// socket.io server and a RabbitMQ relay (amqplib), with nothing of notifylab's.
//
//   node benchmarks/node_relay.mjs PORT --exchange NAME
//
// Its dependencies are installed by `cd benchmarks && npm ci`.
//
// It accepts what `bare_server.py --exchange NAME` accepts: any socket; one that connects
// with auth {session: token} joins the room `user:<token>` and is sent `hello` ({sid})
// once connected (loadgen.mjs waits for it). GET /readyz answers 200 once the relay
// consumes, so nothing published after that is missed.
//
// The relay reads what the Python floor reads: python-socketio's pub/sub messages, as
// JSON, from the fanout exchange NAME that a write-only socketio.AsyncAioPikaManager
// publishes on (cost.py publishes the same way for both floors, so they compare like for
// like). Fanout, not a topic exchange with a binding per user: on one instance every
// notification reaches its queue either way, and the publisher stays python-socketio's
// stock one. A message {"method": "emit", "event", "data": [args...], "namespace",
// "room", "skip_sid"} is emitted to the room as socket.io's emit(event, ...args); other
// methods (rooms, disconnects, callbacks across hosts) and binary payloads are not
// relayed. The queue is server-named and exclusive (gone with the connection); prefetch
// 1024, one ack per message once emitted.
//
// Websocket compression is off, socket.io's default (as `bare_server.py --no-compression`).
import http from "node:http";
import { parseArgs } from "node:util";
import amqp from "amqplib";
import { Server } from "socket.io";

const AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"; // python-socketio's default broker
const PREFETCH = 1024;

const { values, positionals } = parseArgs({
  options: { exchange: { type: "string" } },
  allowPositionals: true,
});
const port = Number(positionals[0]);
if (!Number.isInteger(port) || !values.exchange) {
  console.error("usage: node benchmarks/node_relay.mjs PORT --exchange NAME");
  process.exit(2);
}

const httpServer = http.createServer((req, res) => {
  if (req.url === "/readyz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"ok":true}');
  } else {
    res.writeHead(404);
    res.end();
  }
});
const io = new Server(httpServer, { perMessageDeflate: false, serveClient: false });

io.on("connection", (socket) => {
  socket.join(`user:${socket.handshake.auth?.session}`);
  socket.emit("hello", { sid: socket.id });
});

// The broker going away ends the process: a floor that silently stops relaying
// would read as lost notifications, not as the failure it is.
const connection = await amqp.connect(AMQP_URL);
connection.on("error", (err) => console.error("amqp connection error:", err.message));
connection.on("close", () => {
  console.error("amqp connection closed");
  process.exit(1);
});
const channel = await connection.createChannel();
// As AsyncAioPikaManager declares it (non-durable): a different declaration
// would be refused by the broker.
await channel.assertExchange(values.exchange, "fanout", { durable: false });
const { queue } = await channel.assertQueue("", { exclusive: true });
await channel.bindQueue(queue, values.exchange, "");
await channel.prefetch(PREFETCH);
await channel.consume(queue, (msg) => {
  if (msg === null) return; // cancelled by the broker; the close handler ends us
  let message;
  try {
    message = JSON.parse(msg.content.toString());
  } catch {
    message = null;
  }
  if (message?.method === "emit" && !message.binary) {
    let target = io.of(message.namespace || "/");
    if (message.room != null) target = target.to(message.room);
    if (message.skip_sid != null) target = target.except(message.skip_sid);
    target.emit(message.event, ...message.data);
  }
  channel.ack(msg);
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`node socket.io relay on ${port}, exchange ${values.exchange}`);
});
