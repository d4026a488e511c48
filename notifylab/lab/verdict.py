"""The verdict at the end of every lesson: was anything lost, duplicated or
reordered, and how long did delivery take?

It compares what each session *received* with what its user's inbox stream
*holds* (read through the REST API, the stream being the record of what was
sent). A session must have every notification after its baseline (its cursor
when it first connected), each once, in stream order. Like Maelstrom's
checkers, it judges from the outside: it trusts no counter of the server.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, dataclass

from ..ids import id_after
from .client import Client


@dataclass
class SessionVerdict:
    """What one session got, against its user's stream."""

    session: str  # a label: user@instance
    expected: int  # notifications in the stream after the session's baseline
    received: int
    lost: int
    duplicated: int
    out_of_order: int
    p50_ms: float | None  # latency from creation (ts) to arrival, live notifications only
    p99_ms: float | None

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_order == 0


class Verdict(list[SessionVerdict]):
    """One :class:`SessionVerdict` a session; renders as a table."""

    @property
    def clean(self) -> bool:
        return all(v.clean for v in self)

    def assert_clean(self) -> None:
        """Raise AssertionError naming every session that lost, duplicated or reordered."""
        bad = [v for v in self if not v.clean]
        assert not bad, "delivery broke: " + "; ".join(
            f"{v.session}: {v.lost} lost, {v.duplicated} duplicated, {v.out_of_order} out of order"
            for v in bad
        )

    def rows(self) -> list[dict]:
        return [asdict(v) for v in self]

    def __repr__(self) -> str:  # counts only: the same every run (latencies are in the HTML)
        lines = [
            f"{v.session}: {v.received}/{v.expected} received, {v.lost} lost, "
            f"{v.duplicated} duplicated, {v.out_of_order} out of order"
            for v in self
        ]
        return "\n".join(lines) or "(no sessions)"

    def _repr_html_(self) -> str:
        def cell(value: object) -> str:
            return "" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

        header = "".join(f"<th>{name}</th>" for name in SessionVerdict.__dataclass_fields__)
        body = "".join(
            "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row.values()) + "</tr>" for row in self.rows()
        )
        mark = "&#10004; nothing lost, duplicated or reordered" if self.clean else "&#10008; delivery broke"
        return f"<p>{mark}</p><table><tr>{header}</tr>{body}</table>"


async def verdict(*clients: Client, timeout: float = 15) -> Verdict:
    """Judge each client's session. Waits (at most ``timeout`` seconds) for
    every session to catch up with its user's stream first, since a
    notification may still be on its way."""
    return Verdict([await _judge(client, timeout) for client in clients])


async def _judge(client: Client, timeout: float) -> SessionVerdict:
    baseline = client.baseline
    if baseline is None:
        raise ValueError("this client never connected: there is nothing to judge")
    expected = await stream_after(client, baseline)
    if expected:  # let the session catch up with the newest, bounded
        newest = expected[-1]
        try:
            await client.wait_for(
                lambda: client.last_id is not None and not id_after(newest, client.last_id), timeout
            )
        except TimeoutError:
            pass  # judged as it is: what is missing is lost
    got = [n for n in client.notifications if id_after(n["id"], baseline)]
    got_ids = [n["id"] for n in got]
    latencies = sorted(n["received"] - n["ts"] for n in got if "published" in n and "received" in n)
    return SessionVerdict(
        session=f"{client.user}@{client.instance}",
        expected=len(expected),
        received=len(got),
        lost=len(set(expected) - set(got_ids)),
        duplicated=client.duplicates + len(got_ids) - len(set(got_ids)),
        out_of_order=sum(1 for a, b in itertools.pairwise(got_ids) if not id_after(b, a)),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
    )


async def stream_after(client: Client, after: str) -> list[str]:
    """Every id in the user's stream after ``after``, oldest first (paged)."""
    ids: list[str] = []
    while True:
        page = (await client.inbox(after=after, limit=1000))["notifications"]
        ids += [n["id"] for n in page]
        if len(page) < 1000:
            return ids
        after = page[-1]["id"]


def _percentile(values: list[int], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


__all__ = ["SessionVerdict", "Verdict", "stream_after", "verdict"]
