"""What the lab's inspectors hand back, and how a notebook cell waits on them.

The inspectors (``RabbitView``, ``RedisView``) answer with a :class:`Table`:
a plain ``list`` of ``dict`` rows, so a cell can assert on it with ordinary
Python (``len(t)``, ``t[0]["state"]``, ``[r["id"] for r in t]``), while
Jupyter shows it as an HTML table. Its text form is deterministic, so a
notebook's saved output compares equal from one run to the next.

:func:`wait_until` is the one way the inspectors wait: a distributed system
settles *eventually* (a binding is made a moment after a socket connects, the
management API's statistics trail by seconds), so a cell polls, but never for
ever: a cell stuck in ``await`` cannot be interrupted in Jupyter.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Check = Callable[[], Any | Awaitable[Any]]  # a predicate, plain or async


class Table(list[dict[str, Any]]):
    """A list of dict rows with a column order, shown as a table."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), columns: Iterable[str] | None = None):
        super().__init__(rows)
        # Columns come from the caller (a fixed order, even with no rows) or
        # else from the rows, in the order they first appear.
        self.columns: list[str] = (
            list(columns) if columns is not None else list(dict.fromkeys(k for row in self for k in row))
        )

    def _cells(self) -> list[list[str]]:
        return [["" if row.get(c) is None else str(row.get(c)) for c in self.columns] for row in self]

    def __repr__(self) -> str:
        cells = [list(self.columns), *self._cells()]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        lines = [
            "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip() for line in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) + f"\n({len(self)} row{'' if len(self) == 1 else 's'})"

    def _repr_html_(self) -> str:
        esc = html.escape  # every cell is data, never markup: a username may hold '<'
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    @property
    def df(self) -> Any:
        """The rows as a pandas DataFrame (pandas is optional: the kit extra)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Table.df needs pandas: pip install notifylab[kit]") from None
        return pandas.DataFrame(list(self), columns=self.columns)


def _short(value: object, limit: int = 400) -> str:
    text = repr(list(value) if isinstance(value, Table) else value)  # one line, not the table
    return text if len(text) <= limit else text[:limit] + "..."


async def wait_until(
    check: Check, timeout: float = 10.0, interval: float = 0.2, seen: Callable[[], str] | None = None
) -> Any:
    """Call ``check`` (sync or async) every ``interval`` seconds until it returns
    something true, and return that. After ``timeout`` seconds (even if a call
    of ``check`` itself hangs), raise TimeoutError saying what ``check`` last
    returned, and ``seen()`` if given (an inspector's last answer)."""
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    last: object = "(no answer yet)"
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                last = result
                if result:
                    return result
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():  # check itself timed out on something: not ours to rename
            raise
        extra = seen() if seen is not None else ""
        raise TimeoutError(
            f"still not true after {timeout:g} s; the check last returned {_short(last)}"
            + (f"; last seen: {extra}" if extra else "")
        ) from None
