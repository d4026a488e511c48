"""A bounded number of log lines for something that can repeat without end.

Bad input comes in floods: one broken publisher, one hostile client, can
send thousands of malformed messages a second. A log line for each would
fill the disk and bury everything else, and writing them would cost the
instance more than the input does. So a repeated complaint is written at
most ``lines`` times per ``seconds``; the rest are counted, and the next
line written says how many were left out.
"""

from __future__ import annotations

import logging
import time


class LogBudget:
    """At most ``lines`` log lines per ``seconds`` for one kind of complaint."""

    def __init__(self, logger: logging.Logger, lines: int = 5, seconds: float = 10.0):
        self.logger = logger
        self.lines = lines
        self.seconds = seconds
        self._window_start = float("-inf")
        self._written = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log ``message % args`` as a WARNING if the budget allows; returns
        whether it did. A line after a quiet spell tells how many lines the
        budget held back."""
        now = time.monotonic()
        if now - self._window_start >= self.seconds:
            self._window_start, self._written = now, 0
        if self._written >= self.lines:
            self._suppressed += 1
            return False
        self._written += 1
        if self._suppressed:
            message += " (and %d more like it not logged)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self.logger.warning(message, *args)
        return True
