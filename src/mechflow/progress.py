"""What a long job shows while it runs: progress, and the tables it is growing.

Snakemake runs a step with stderr redirected to its log, where tqdm hides itself; so
``Progress`` is a tqdm bar on a terminal and, elsewhere, a log line every ``LOG_EVERY_S``
seconds (the first at the first update, the last at the end), e.g.::

    train attn_only_2l: step 1200/3000 (40%) loss 2.314 | 830 tokens/s | 1m10s elapsed, ETA 1m45s

``LiveTable`` is a loss table written row by row as a job logs them, for ``tail -f``; the step
still writes the finished table atomically at the end and then removes the live one. Timings
and rates go to the log only, never to a table (tables stay deterministic).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Self

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # seconds between two progress lines in a log


def format_duration(seconds: float) -> str:
    """``0.4s``, ``45s``, ``1m10s``, ``2h05m``."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def _metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress of a loop over ``total`` units: iterate it like tqdm, or call ``update``.

    ``initial`` units were done before (a resumed run); the rate counts this run's units only.
    With ``rate_unit`` the rate is in those (``rate_scale`` of them per unit: tokens per step),
    else in units. ``set_postfix`` sets the metrics shown (loss, l0, ...). ``enabled=False``
    shows nothing; ``tty`` (default: whether ``file`` is a terminal) picks the bar or log lines.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int,
        desc: str,
        initial: int = 0,
        unit: str = "step",
        rate_unit: str | None = None,
        rate_scale: float = 1.0,
        enabled: bool = True,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        file: IO[str] | None = None,
        tty: bool | None = None,
    ):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.rate_unit = rate_unit or f"{unit}s"
        self.rate_scale = rate_scale if rate_unit else 1.0
        self.logger, self.clock = logger or log, clock
        self.postfix: dict[str, str] = {}
        self.closed = not enabled
        self.bar = None
        self._start = clock()
        self._logged_at: float | None = None  # when the last line was written
        self._logged_n: int | None = None
        if enabled:
            file = file or sys.stderr
            if tty is None:
                tty = bool(getattr(file, "isatty", lambda: False)())
            if tty:
                self.bar = tqdm(
                    total=total, initial=initial, desc=desc, unit=unit, file=file, disable=False
                )

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("Progress was given no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **metrics: Any) -> None:
        self.postfix = {k: _metric(v) for k, v in metrics.items()}
        if self.bar is not None and not self.closed:
            self.bar.set_postfix(self.postfix, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.closed:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            self._log(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self._logged_n != self.n:
            self._log(self.clock(), last=True)

    def line(self, now: float, last: bool = False) -> str:
        """The log line at time ``now``: count, metrics, rate, elapsed and (unless ``last``) ETA."""
        count = f"{self.unit} {self.n}/{self.total}"
        if self.total > 0:
            count += f" ({math.floor(100 * self.n / self.total)}%)"
        parts = [" ".join([count, *(f"{k} {v}" for k, v in self.postfix.items())])]
        elapsed = now - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        if rate is not None:
            parts.append(f"{format_rate(rate * self.rate_scale)} {self.rate_unit}/s")
        timing = f"{format_duration(elapsed)} elapsed"
        if rate is not None and not last and self.n < self.total:
            timing += f", ETA {format_duration((self.total - self.n) / rate)}"
        parts.append(timing)
        return f"{self.desc}: " + " | ".join(parts)

    def _log(self, now: float, last: bool = False) -> None:
        self.logger.info("%s", self.line(now, last))
        self._logged_at, self._logged_n = now, self.n


def live_path(path: str | Path) -> Path:
    """Where the live copy of the table ``path`` grows: ``train_log.csv`` -> ``train_log.partial.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _cell(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy or torch scalar
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # as pandas writes a missing value
    return value


class LiveTable:
    """A CSV table a user can ``tail -f`` while a job logs its rows: header on opening, each
    ``append`` flushed at once. Opening truncates it, so a resumed run restarts it from the
    rows it resumed with (its loop appends those first)."""

    def __init__(self, path: str | Path, columns: Iterable[str]):
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", newline="")  # noqa: SIM115 - closed by close()
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._fh.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow([_cell(row[c]) for c in self.columns])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def remove(self) -> None:
        """Once the finished table is written: the live copy would only mislead."""
        self.close()
        self.path.unlink(missing_ok=True)
