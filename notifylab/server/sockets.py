"""The Socket.IO side of a server instance.

A socket authenticates with its session (the browser's cookie, or
``auth={"session": token}`` from other clients) and may send ``last_id``,
the newest notification it has seen. Once connected it gets ``hello``, then
what it missed, then live notifications (``feed.py``). Every event a client
sends is validated and acknowledged with ``{ok: true, ...}`` or
``{ok: false, error}``; while Redis or RabbitMQ is unreachable the error is
"service unavailable", and a connect is refused saying so (never left hanging).
A socket whose session is gone (expired, or deleted without its socket being
found) is told ``session:revoked`` and disconnected by :meth:`check_sessions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

import engineio
import socketio
from aio_pika.exceptions import AMQPError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import codec
from ..errors import BadRequest, NotifylabError, ServiceUnavailable, Unauthorized
from ..ids import ZERO, is_id
from ..logbudget import LogBudget
from ..protocol import COOKIE
from ..store.operations import Operation
from ..store.sessions import Session
from . import admission, engine, flood
from .services import Services

log = logging.getLogger(__name__)

CONNECT_WAIT_SECONDS = 5
UPGRADE_WAIT_SECONDS = 5
# A connect gives up on Redis after this long: refused, so the client tries
# again or elsewhere, rather than waiting on a store that does not answer.
STORE_WAIT_SECONDS = 5
UNAVAILABLE = "service unavailable, retry in a moment"
HELLO_OPERATIONS = 50  # the newest operations hello lists (Operations.of_user's default)

# What an outage of Redis or RabbitMQ raises: redis-py's connection errors
# (BusyLoadingError, while Redis loads its data, among them), a refused or
# reset socket (OSError, TimeoutError among them), the broker's errors. Not a
# ResponseError: Redis answered, so that is a bug, logged as one.
OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError, AMQPError)

# What python-socketio raises on a packet it cannot read (invalid or too
# deeply nested JSON, a packet of the wrong shape).
MALFORMED = (ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError)

# Events refused for being no event of ours (an unknown name, a name that is
# not a string, a reserved one) a socket may send: a burst of REFUSALS_BURST,
# then REFUSALS_PER_SECOND. Each is answered, but a socket sending them in
# thousands is probing or broken, and is shed. No client of ours sends any;
# the burst leaves room for a client newer than the server, and for
# tests/test_fuzz_sockets.py's few hundred on one socket.
REFUSALS_BURST = 500
REFUSALS_PER_SECOND = 50
# Binary attachments one Socket.IO packet may announce. python-socketio holds
# every frame after such a packet as one of its attachments until their
# number is reached, so an announced billion would have it keep every frame
# the client sends. Ours carry none; a client's bytes values are one each.
ATTACHMENTS_MAX = 256

# A client event's handler: (user, data) -> the fields of its ack.
EventHandler = Callable[[str, dict], Awaitable[dict]]


def cookie_token(environ: dict) -> str | None:
    """The session token from the request's cookie, if any."""
    try:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel else None


class Server(socketio.AsyncServer):
    """python-socketio's server, guarded against what a client can send it.

    Two of its private methods are wrapped (python-socketio is pinned below 6;
    tests/test_hardening_sockets.py and test_fuzz_sockets.py hold them):

    - an event named by something other than a string, or named ``"*"``:
      python-socketio looks the name up in a dict (a list raises TypeError,
      and the client waits for an ack forever) and calls the catch-all handler
      for ``"*"`` without the name. Both are refused with an ack instead.
    - a packet it cannot decode (an integer of over 100 digits, which
      engine.io's JSON refuses, or JSON nested past the recursion limit): it
      would log a traceback and ignore the packet, the client waiting for an
      ack that never comes; the socket is shed instead (:meth:`shed`), and
      so is one whose frames engine.io itself cannot read (``engine.py``).
    - a packet announcing more than ``ATTACHMENTS_MAX`` binary attachments,
      or attachments past the size limit together: python-socketio would
      hold every later frame as one. Shed too.

    And a socket sending events that are refused as none of ours faster
    than ``REFUSALS_BURST`` / ``REFUSALS_PER_SECOND`` is shed. What a client
    does wrong is logged within a budget (``logbudget.py``): a few lines per
    10 seconds, then a count of those left out, however many clients do it.

    Its engine.io is made lighter per socket (``engine.py``): no websocket
    compression unless ``ws_compression``, and a smaller packet queue.
    ``proxies`` are the trusted proxies, to name a client's address in the log.
    """

    def __init__(
        self, *args: Any, ws_compression: bool = False, proxies: tuple[str, ...] = (), **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        # A copy: engine.io's driver table is one dict shared by every server in the process.
        self.eio._async = {
            **self.eio._async,
            "websocket": engine.websocket_class(ws_compression, on_unreadable=self.shed),
            "translate_request": engine.checked_translate_request(on_unreadable=self.shed),
        }
        self.eio.create_queue = engine.SocketQueue  # each socket's outgoing packets
        self.eio.sockets = engine.Sockets()  # each socket filed there as an engine.Socket
        self.proxies = proxies
        self.on_shed: Callable[[], object] | None = None  # called for each socket shed (a metric)
        self._refusals = flood.TokenBuckets(REFUSALS_PER_SECOND, REFUSALS_BURST)  # by socket id
        self._refusals_log = LogBudget(log)
        self._shed_log = LogBudget(log)  # apart: a flood of refusals must not hide who was shed

    async def shed(self, eio_sid: str, why: str) -> None:
        """Disconnect engine.io connection ``eio_sid`` for what its client
        sent (``why``), with one WARNING naming it and its address (within
        the log's budget). A websocket is cut at once, as a slow client is,
        so that nothing more it sends is read; its client reconnects as
        after any drop. Nothing if it is gone or going already."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            return
        environ = self.environ.get(eio_sid) or {}
        request = environ.get("aiohttp.request")
        address = flood.peer_address(request, self.proxies) if request is not None else "?"
        self._shed_log.warning("connection %s from %s sent %s; disconnecting it", eio_sid, address, why)
        if self.on_shed is not None:
            self.on_shed()
        cut = engine.cut(socket)
        # What engine.io's disconnect() does, without waiting for the client
        # to take the CLOSE packet (one that never reads would hold this
        # forever): the Socket.IO disconnect handlers run now, a polling
        # socket is told (a cut websocket cannot be), and the socket is
        # forgotten, so that its next request is refused as of no session.
        await socket.close(wait=False, abort=cut, reason=self.eio.reason.SERVER_DISCONNECT)
        self.eio.sockets.pop(eio_sid, None)

    async def refused(self, sid: str, message: str, *args: object) -> None:
        """Note that an event of socket ``sid`` was refused as none of ours:
        ``message % args`` is logged within the budget, and a socket past
        its allowance of refusals is shed."""
        self._refusals_log.warning(message, *args)
        if self._refusals.take(sid):
            eio_sid = self.manager.eio_sid_from_sid(sid, "/")
            if eio_sid is not None:
                await self.shed(eio_sid, f"events refused faster than {REFUSALS_PER_SECOND} a second")

    def emit_now(self, event: str, data: Any, room: str) -> int:
        """``emit(event, data, room=room, ignore_queue=True)`` for the feed's
        hot path: to the sockets of ``room`` on this instance only, at once,
        without awaiting. ``data`` is JSON (what came off the bus or out of
        the stream), never bytes.

        The packet is encoded once, as socket.io's EVENT packet (``2`` and the
        JSON array ``[event, data]``), and given to each socket's queue in
        turn, which writes it straight to an idle websocket (``engine.py``).
        python-socketio's ``emit`` first walks the data looking for bytes (for
        its binary packets), then makes a task per socket and waits for them
        all; engine.io's ``send`` awaits per socket: measured with
        ``benchmarks/cost.py``, those were most of the emit. What ``send``
        checks first is kept: a socket closed or closing is skipped, and one
        whose client stopped answering pings is left to engine.io's ``send``,
        which closes it. Returns how many sockets it was given to.
        tests/test_contract.py checks that a client receives it exactly as it
        receives ``emit``'s."""
        frame = engineio.packet.Packet(engineio.packet.MESSAGE, "2" + codec.dumps([event, data]))
        sockets = self.eio.sockets
        ping_timeout = self.eio.ping_timeout
        now = time.time()
        sent = 0
        for _sid, eio_sid in self.manager.get_participants("/", room):
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                continue
            if socket.last_ping and now - socket.last_ping > ping_timeout:
                self.eio.start_background_task(self.eio.send_packet, eio_sid, frame)  # it closes the socket
                continue
            socket.queue.send_now(frame)  # engine.py: written at once while its writer is idle
            sent += 1
        return sent

    async def _trigger_event(self, event: Any, namespace: str, *args: Any) -> Any:
        if isinstance(event, str) and event != "*":
            return await super()._trigger_event(event, namespace, *args)
        sid = args[0] if args else "?"
        await self.refused(sid, "socket %s sent an event named %.40r; refused", sid, event)
        return {"ok": False, "error": "an event's name must be a string naming an event"}

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            self._check_attachment(eio_sid, data)
            await super()._handle_eio_message(eio_sid, data)
            self._check_announced(eio_sid)
        except MALFORMED as exc:
            await self.shed(eio_sid, f"a packet that cannot be read ({type(exc).__name__}: {str(exc)[:80]})")

    def _check_attachment(self, eio_sid: str, data: Any) -> None:
        """ValueError if ``data``, the next attachment of a binary packet,
        takes its attachments past the size limit."""
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            held = sum(map(len, pending.attachments)) + len(data)
            if held > self.eio.max_http_buffer_size:
                raise ValueError(f"binary attachments of over {self.eio.max_http_buffer_size} bytes")

    def _check_announced(self, eio_sid: str) -> None:
        """ValueError if the binary packet just read announced more than
        ``ATTACHMENTS_MAX`` attachments (it is dropped)."""
        pending = self._binary_packet.get(eio_sid)
        if pending is not None and pending.attachment_count > ATTACHMENTS_MAX:
            del self._binary_packet[eio_sid]
            raise ValueError(f"a packet announcing {pending.attachment_count} binary attachments")


class SocketHandlers:
    """The handlers of one instance's Socket.IO server, one method each:
    ``connect`` and ``disconnect`` for a socket's lifetime, and one method a
    client event (``operation:start`` is :meth:`operation_start`)."""

    def __init__(self, sio: Server, services: Services):
        self.sio = sio
        self.services = services
        self._welcomes: set[asyncio.Task] = set()  # strong references until each finishes
        # Sockets whose connect was accepted here: sid -> (user, session id).
        # python-socketio runs the connect/disconnect handlers for a client
        # *event* of that name too; this tells such a forgery from the real
        # lifecycle. check_sessions() reads the sessions from it.
        self._live: dict[str, tuple[str, str]] = {}

    def register(self) -> None:
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        events: dict[str, EventHandler] = {
            "operation:start": self.operation_start,
            "operation:cancel": self.operation_cancel,
            "inbox:read": self.inbox_read,
            "sync": self.sync,
        }
        for name, handler in events.items():
            self.sio.on(name, self._acked(name, handler))
        self.sio.on("*", self.unknown_event)

    # -- a socket's lifetime --------------------------------------------------

    async def connect(self, sid: str, environ: Any = None, auth: Any = None, *extra: Any) -> dict | None:
        """Refuse a socket without a live session (or while Redis is
        unreachable); otherwise record it and welcome it (in a task: see
        :meth:`_welcome`)."""
        if sid in self._live:  # a client event named "connect" on a live socket
            return await self._reserved("connect", sid)
        if extra:  # only a client event can bring more arguments, and this sid is not connected
            return await self._reserved("connect", sid)
        environ = environ if isinstance(environ, dict) else {}
        try:
            session, last_id, transport = await self._session_for(sid, environ, auth)
        except BaseException:
            admission.leave(environ)  # refused: its place goes to the next socket
            raise
        await self.sio.save_session(sid, {"user": session.user, "session": session.id})
        self._live[sid] = (session.user, session.id)
        self.services.metrics.sockets.inc()
        welcome = self._welcome(sid, session.user, session.id, last_id, transport, environ)
        task = asyncio.create_task(welcome)
        self._welcomes.add(task)
        task.add_done_callback(self._welcomes.discard)
        return None

    async def _session_for(self, sid: str, environ: dict, auth: Any) -> tuple[Session, str | None, str]:
        """The socket's session, ``last_id`` and transport; ConnectionRefusedError
        if it has no live session or the store is unreachable."""
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("session") or cookie_token(environ)
        last_id = auth.get("last_id")
        if last_id is not None and not is_id(last_id):
            raise socketio.exceptions.ConnectionRefusedError("last_id is not a notification id")
        transport = self.sio.transport(sid)
        try:
            async with asyncio.timeout(STORE_WAIT_SECONDS):
                session = await self.services.sessions.resolve_socket(
                    token, self.services.presence, sid, transport
                )
                if session is None:
                    log.info("refused socket %s: no valid session", sid)
                    raise socketio.exceptions.ConnectionRefusedError("unauthorized: log in first")
        except OUTAGE as exc:
            log.warning("refused socket %s: the store is unavailable (%s)", sid, _brief(exc))
            raise socketio.exceptions.ConnectionRefusedError(UNAVAILABLE) from None
        return session, last_id, transport

    async def _welcome(
        self, sid: str, user: str, session_id: str, last_id: str | None, transport: str, environ: dict
    ) -> None:
        """Send ``hello``, replay what the socket missed, then join it to its
        user's room (``Feed.attach``); then its place among the sockets being
        taken in (``admission.py``) goes to the next."""
        services = self.services
        # The connect handler runs before the client is told it is connected;
        # anything emitted then would be dropped, so wait for that moment.
        try:
            async with asyncio.timeout(CONNECT_WAIT_SECONDS):
                while not self.sio.manager.is_connected(sid, "/"):  # noqa: ASYNC110 (python-socketio has no event for it)
                    await asyncio.sleep(0.005)

            async def hello(cursor: str) -> None:
                unread, operations = await self._hello_data(user, cursor)
                await self.sio.emit(
                    "hello",
                    {
                        "instance": services.instance,
                        "user": user,
                        "session": session_id,
                        "unread": unread,
                        "last_id": cursor,
                        "operations": operations,
                    },
                    to=sid,
                    ignore_queue=True,
                )

            await services.feed.attach(sid, user, last_id, before_replay=hello)
            if transport == "polling":
                await self._record_upgrade(sid, session_id)
        except TimeoutError:
            log.info("socket %s left before it was connected", sid)
        except OUTAGE as exc:  # the client reconnects and is welcomed once the store is back
            log.warning("could not welcome socket %s (%s); disconnecting it", sid, _brief(exc))
            await self.sio.disconnect(sid, ignore_queue=True)
        except Exception:
            log.exception("welcoming socket %s failed; disconnecting it", sid)
            await self.sio.disconnect(sid, ignore_queue=True)
        finally:
            admission.leave(environ)

    async def _hello_data(self, user: str, cursor: str) -> tuple[int, list[dict]]:
        """Hello's unread count (up to ``cursor``) and the user's operations,
        newest first, in two round trips however many operations there are:
        what ``Inbox.unread`` and ``Operations.of_user`` read, batched."""
        inbox, operations = self.services.inbox, self.services.operations
        async with inbox.redis.pipeline(transaction=False) as pipe:
            inbox.queue_read_mark(pipe, user)
            pipe.zrevrange(operations.index_key(user), 0, HELLO_OPERATIONS - 1)
            mark, op_ids = await pipe.execute()
        async with inbox.redis.pipeline(transaction=False) as pipe:
            inbox.queue_unread(pipe, user, mark, upto=cursor)
            for op_id in op_ids:
                pipe.hgetall(operations.record_key(op_id))
            entries, *records = await pipe.execute()
        ops = [Operation.from_redis(record).as_dict() for record in records if record]
        return inbox.count_unread(entries), ops

    async def _record_upgrade(self, sid: str, session_id: str) -> None:
        # Browsers connect by long-polling and upgrade to a websocket a moment
        # later; engine.io has no hook for that, so look for it a little while.
        for _ in range(UPGRADE_WAIT_SECONDS * 10):
            if not self.sio.manager.is_connected(sid, "/"):
                return
            if self.sio.transport(sid) == "websocket":
                await self.services.presence.set_transport(session_id, sid, "websocket")
                return
            await asyncio.sleep(0.1)

    async def disconnect(self, sid: str, reason: Any = None, *extra: Any) -> dict | None:
        """Forget a socket that went away. python-socketio marks it
        disconnected before calling this, so a socket still connected is
        sending an event named "disconnect": refused, and it stays in place
        (presence, feed, room) for revocation to find."""
        if self.sio.manager.is_connected(sid, "/"):
            return await self._reserved("disconnect", sid)
        live = self._live.pop(sid, None)
        if live is None:  # refused at connect, or gone already
            return None
        user, session_id = live
        self.services.metrics.sockets.dec()
        await self.services.feed.detach(sid, user)
        try:
            await self.services.presence.remove_socket(session_id, sid)
        except OUTAGE as exc:  # its entry names this instance: dropped when it stops beating
            log.warning("could not remove socket %s from presence (%s)", sid, _brief(exc))
        return None

    async def check_sessions(self) -> int:
        """Disconnect, with ``session:revoked``, every socket here whose
        session is gone: expired, or deleted while its socket was not found
        (revocation finds sockets through presence). One Redis round trip for
        all the sessions; returns how many sockets were disconnected."""
        by_session: defaultdict[str, list[str]] = defaultdict(list)
        for sid, (_user, session_id) in list(self._live.items()):
            by_session[session_id].append(sid)
        if not by_session:
            return 0
        alive = await self.services.sessions.alive(by_session)
        ended = 0
        for session_id in by_session.keys() - alive:
            for sid in by_session[session_id]:
                if sid not in self._live:  # it left meanwhile
                    continue
                log.info("socket %s: its session %s is gone; disconnecting it", sid, session_id[:8])
                await self.sio.emit(
                    "session:revoked", {"session": session_id, "reason": "expired"}, to=sid, ignore_queue=True
                )
                await self.sio.disconnect(sid, ignore_queue=True)
                ended += 1
        return ended

    # -- client events --------------------------------------------------------

    def _acked(self, name: str, handler: EventHandler) -> Callable[..., Awaitable[dict]]:
        """Wrap an event handler: check the session, validate the payload,
        turn errors into ``{ok: false, error}``."""

        async def acked(sid: str, data: Any = None, *extra: Any) -> dict:
            try:
                live = self._live.get(sid)
                if live is None:  # its connect has not finished, or it is leaving
                    raise Unauthorized("this socket is not connected")
                user, session_id = live
                if extra:
                    raise BadRequest("an event takes one argument, an object")
                if not isinstance(data, dict):
                    raise BadRequest("the event's data must be an object")
                if not await self.services.sessions.alive([session_id]):
                    raise Unauthorized("this session was signed out")
                return {"ok": True, **await handler(user, data)}
            except NotifylabError as exc:
                log.info("event %s from %s refused: %s", name, sid, exc.message)
                return {"ok": False, **exc.as_dict()}
            except OUTAGE as exc:
                log.warning("event %s from %s failed: service unavailable (%s)", name, sid, _brief(exc))
                return {"ok": False, **ServiceUnavailable(UNAVAILABLE).as_dict()}
            except Exception:
                log.exception("event %s from %s failed", name, sid)
                return {"ok": False, "error": "internal error"}

        return acked

    async def unknown_event(self, event: str, sid: str, *args: Any) -> dict:
        """Every event without a handler (``connect_error`` included): refused."""
        await self.sio.refused(sid, "socket %s sent unknown event %.40r", sid, event)
        return {"ok": False, "error": f"unknown event {str(event)[:40]!r}"}

    async def _reserved(self, event: str, sid: str) -> dict:
        await self.sio.refused(sid, "socket %s sent the reserved event %r; refused", sid, event)
        return {"ok": False, "error": f"{event!r} is reserved for the Socket.IO lifecycle"}

    async def operation_start(self, user: str, data: dict) -> dict:
        op = await self.services.start_operation(user, data.get("kind"), data.get("params"))
        return {"operation": op.as_dict()}

    async def operation_cancel(self, user: str, data: dict) -> dict:
        op = await self.services.cancel_operation(user, data.get("id"), "a live session")
        return {"operation": op.as_dict()}

    async def inbox_read(self, user: str, data: dict) -> dict:
        mark, unread = await self.services.mark_read(user, data.get("up_to"))
        return {"up_to": mark, "unread": unread}

    async def sync(self, user: str, data: dict) -> dict:
        after = data.get("after") or ZERO
        if not is_id(after):
            raise BadRequest("after must be a notification id", "after")
        return {
            "notifications": await self.services.inbox.after(user, after),
            "unread": await self.services.inbox.unread(user),
        }


def _brief(exc: BaseException) -> str:
    """One line about an outage's error, for the log (no traceback)."""
    return f"{type(exc).__name__}: {str(exc)[:120]}" if str(exc) else type(exc).__name__
