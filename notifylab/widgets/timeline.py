"""Where the time goes: a swim-lane picture of notifications on their way.

A notification passes five places, and each stamps it with the time
(milliseconds, all on one clock only if all run on one machine):

========  ======================================  =========================
lane      what happened there                     the number
========  ======================================  =========================
worker    the worker (or server) wrote it         ``ts``
stream    Redis appended it to the user's stream  the id's millisecond part
exchange  it was published to RabbitMQ            ``published``
instance  a server instance emitted it            ``emitted`` (+ ``instance``)
session   this Python session received it         ``received``
========  ======================================  =========================

The picture puts the lanes one under the other and time along them, counted
from each notification's ``ts``: every notification is a line down through
the lanes, so a hop that takes long is a line that leans far to the right.
(Wall-clock time along the x axis would not work: notifications seconds
apart, each crossing the lanes in a few milliseconds, would all be vertical.)

A notification *replayed* from the stream (missed while a session was away,
sent again on reconnect) never went through the exchange: it has no
``published`` and is drawn dashed, skipping that lane. Its "latency" is how
long it waited, which can be minutes: the x axis is scaled to the live ones,
and a line that runs off the right edge is drawn to the edge.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable

import ipywidgets as w

from ..ids import parse_id
from ..lab.client import Client
from .panel import LiveBox

LANES = ("worker", "stream", "exchange", "instance", "session")
FIELDS = ("ts", "stream_ms", "published", "emitted", "received")  # one per lane
COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
REPLAYED = "#ff7f0e"
WIDTH, LEFT, RIGHT, LANE, TOP = 760, 70, 130, 40, 24


def session_label(client: Client, index: int) -> str:
    """``user·abcd`` (the session id's start), or ``user#index`` before hello."""
    session = (client.hello or {}).get("session")
    return f"{client.user}·{session[:4]}" if session else f"{client.user}#{index}"


class Timeline(LiveBox):
    """A live swim-lane picture of the last ``last`` notifications received
    by ``clients`` (one or several sessions, maybe of different users).

    :meth:`rows` gives the numbers behind it; ``svg`` is the ``HTML`` widget
    that holds the picture.
    """

    def __init__(self, clients: Client | Iterable[Client], *, last: int = 20, interval: float = 0.25):
        self.clients = [clients] if isinstance(clients, Client) else list(clients)
        self.last = last
        self.svg = w.HTML()
        self._drawn: tuple | None = None  # what the picture shows, to skip redrawing it
        super().__init__([self.svg], interval)

    def __repr__(self) -> str:
        return f"<Timeline sessions={len(getattr(self, 'clients', ()))} last={getattr(self, 'last', None)}>"

    def rows(self) -> list[dict]:
        """One dict per (notification, session) delivery, oldest received
        first, the last ``last`` of them: id, type, session, instance, ts,
        stream_ms, published, emitted, received (ms or None), latency_ms
        (received - ts) and replayed (no ``published``)."""
        found = []
        for index, client in enumerate(self.clients):
            label = session_label(client, index)
            for note in client.notifications[-self.last :]:
                parsed = parse_id(note["id"])
                ts, received = note.get("ts"), note.get("received")
                found.append(
                    {
                        "id": note["id"],
                        "type": note["type"],
                        "session": label,
                        "instance": note.get("instance"),
                        "ts": ts,
                        "stream_ms": parsed[0] if parsed else None,
                        "published": note.get("published"),
                        "emitted": note.get("emitted"),
                        "received": received,
                        "latency_ms": received - ts if received is not None and ts is not None else None,
                        "replayed": "published" not in note,
                    }
                )
        found.sort(key=lambda row: (row["received"] or 0, row["id"]))
        return found[-self.last :]

    def render(self) -> None:
        # Cheap check first: redraw only when some client received something.
        drawn = tuple((id(c), len(c.notifications), session_label(c, i)) for i, c in enumerate(self.clients))
        if drawn != self._drawn:
            self.svg.value = draw(self.rows())
            self._drawn = drawn


def draw(rows: list[dict]) -> str:
    """The SVG (as HTML text) for ``rows`` as :meth:`Timeline.rows` gives them."""
    live = [r["latency_ms"] for r in rows if not r["replayed"] and r["latency_ms"] is not None]
    every = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    span = max(max(live or every or [1]), 1)
    sessions = sorted({r["session"] for r in rows if not r["replayed"]})
    colours = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(sessions)}

    lines: list[str] = []
    ends: Counter[tuple[int, str, str]] = Counter()
    for row in rows:
        colour = REPLAYED if row["replayed"] else colours[row["session"]]
        points = _points(row, span)
        if points:
            lines.append(_line(row, points, colour))
            ends[(round(points[-1][0]), _label(row), colour)] += 1
    # Lines ending at the same place with the same label share one label.
    placed, label_rows = _place(
        [(x, text + (f" \u00d7{n}" if n > 1 else ""), colour) for (x, text, colour), n in ends.items()]
    )

    bottom = _lane_y(len(LANES) - 1)
    height = bottom + 12 * label_rows + 10
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            'font-family="sans-serif" font-size="11">'
        ),
        (
            f'<text x="{LEFT}" y="14" fill="#555">0 ms after it was written</text>'
            f'<text x="{WIDTH - RIGHT}" y="14" fill="#555" text-anchor="end">{span} ms</text>'
        ),
    ]
    for i, lane in enumerate(LANES):
        y = _lane_y(i)
        parts.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#ddd"/>'
            f'<text x="4" y="{y + 4}" fill="#555">{lane}</text>'
        )
    # The key: one colour per session; replays dashed, whoever received them.
    for i, (name, colour) in enumerate([*colours.items(), ("replayed", REPLAYED)]):
        parts.append(
            f'<text x="{WIDTH - RIGHT + 12}" y="{TOP + 14 * (i + 1)}" fill="{colour}">'
            f"&#9632; {html.escape(name)}</text>"
        )
    parts.extend(lines)
    for x, row_index, text, colour in placed:
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 12 * (row_index + 1)}" fill="{colour}">'
            f"{html.escape(text)}</text>"
        )
    if not rows:
        parts.append(
            f'<text x="{LEFT}" y="{_lane_y(2) - 6}" fill="#999">no notifications received yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _lane_y(i: int) -> int:
    return TOP + LANE // 2 + LANE * i


def _points(row: dict, span: int) -> list[tuple[float, int]]:
    """Where the row's line bends: one point per lane it has a time for."""
    points = []
    for i, name in enumerate(FIELDS):
        value = row[name]
        if value is None or row["ts"] is None:
            continue  # replayed: no "published"; or a server too old to stamp
        offset = min(max(value - row["ts"], 0), span)  # clocks may disagree by a millisecond
        points.append((LEFT + offset * (WIDTH - RIGHT - LEFT) / span, _lane_y(i)))
    return points


def _label(row: dict) -> str:
    latency = "?" if row["latency_ms"] is None else f"{row['latency_ms']} ms"
    return f"{latency} via {row['instance'] or '?'}"


def _line(row: dict, points: list[tuple[float, int]], colour: str) -> str:
    dash = ' stroke-dasharray="4 3"' if row["replayed"] else ""
    path = " ".join(f"{x:.1f},{y}" for x, y in points)
    tip = html.escape(
        f"{row['type']} {row['id']} to {row['session']}: {_label(row)}"
        + (" (replayed)" if row["replayed"] else "")
    )
    x, y = points[-1]
    return (
        f'<g><title>{tip}</title><polyline points="{path}" fill="none" stroke="{colour}" '
        f'stroke-width="1.5"{dash}/><circle cx="{x:.1f}" cy="{y}" r="2.5" fill="{colour}"/></g>'
    )


def _place(labels: list[tuple[float, str, str]], max_rows: int = 8) -> tuple[list, int]:
    """Put each label under its line's end, in the first row below the lanes
    where it overlaps no other; past ``max_rows`` a label is left out (its
    line's tooltip still says it). Returns (x, row, text, colour)s and rows used."""
    taken: list[list[tuple[float, float]]] = [[] for _ in range(max_rows)]
    placed = []
    for x, text, colour in sorted(labels):
        width = 6.2 * len(text)  # about 11px sans-serif
        start = min(x - 3, WIDTH - width - 2)
        for index, spans in enumerate(taken):
            if all(start > end + 4 or start + width < begin - 4 for begin, end in spans):
                spans.append((start, start + width))
                placed.append((start, index, text, colour))
                break
    return placed, max((index + 1 for _x, index, _t, _c in placed), default=0)
