"""The progress reporter on an injected clock: when lines are written, what they say (rate, ETA),
the tqdm bar on a terminal, silence when disabled; and the live table."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from mechflow import progress as progress_module
from mechflow.progress import LOG_EVERY_S, LiveTable, Progress, format_duration, live_path

LOGGER = "mechflow.test_progress"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    """The progress lines logged so far (a function: call it to read them)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == LOGGER]


def reporter(clock, **kwargs) -> Progress:
    kwargs = {"total": 100, "desc": "train m", "tty": False, **kwargs}
    return Progress(clock=clock, logger=logging.getLogger(LOGGER), **kwargs)


def test_lines_come_first_at_once_then_every_interval_and_last_at_the_end(lines):
    clock = Clock()
    bar = reporter(clock)
    assert lines() == []  # nothing before the loop has done anything
    clock.now = 0.5
    bar.update()  # the first update: a line at once, so the log shows the job has started
    assert len(lines()) == 1 and "step 1/100 (1%)" in lines()[0]
    for step in range(2, 60):
        clock.now = 0.5 + (step - 1) * 0.2  # 5 steps a second
        bar.update()
        if clock.now < 0.5 + LOG_EVERY_S:
            assert len(lines()) == 1, (step, clock.now)
    # the second line came with the first update at least LOG_EVERY_S after the first line
    assert len(lines()) == 2 and "step 51/100 (51%)" in lines()[1]
    clock.now = 20.0
    bar.close()
    assert len(lines()) == 3 and "step 59/100 (59%)" in lines()[2]
    bar.close()  # closing twice writes nothing more
    bar.update()
    assert len(lines()) == 3


def test_rate_eta_and_metrics_are_in_the_line(lines):
    clock = Clock()
    bar = reporter(clock, rate_unit="tokens", rate_scale=10)
    bar.set_postfix(loss=2.31415, l0="12.5")
    clock.now = 10.0
    bar.update(40)  # 4 steps/s: 40 tokens/s, 60 steps left: 15 s
    assert lines() == [
        "train m: step 40/100 (40%) loss 2.314 l0 12.5 | 40.0 tokens/s | 10s elapsed, ETA 15s"
    ]
    clock.now = 25.0
    bar.update(60)  # done: the line says how long it took and has no ETA
    assert (
        lines()[-1]
        == "train m: step 100/100 (100%) loss 2.314 l0 12.5 | 40.0 tokens/s | 25s elapsed"
    )
    bar.close()
    assert len(lines()) == 2  # the end was already logged


def test_a_resumed_run_rates_only_its_own_steps(lines):
    clock = Clock()
    bar = reporter(clock, total=3000, initial=1000, desc="train attn_only_2l")
    clock.now = 70.0
    bar.update(700)  # 10 steps/s in this run; 1300 left
    assert lines() == [
        "train attn_only_2l: step 1700/3000 (56%) | 10.0 steps/s | 1m10s elapsed, ETA 2m10s"
    ]


def test_without_a_rate_unit_the_rate_is_in_units(lines):
    clock = Clock()
    bar = reporter(clock, total=10, unit="epoch", desc="grok")
    clock.now = 4.0
    bar.update()
    assert lines() == ["grok: epoch 1/10 (10%) | 0.25 epochs/s | 4.0s elapsed, ETA 36s"]


def test_iterating_counts_each_item_and_logs_the_end(lines):
    clock = Clock()
    seen = []
    for item in reporter(clock, total=3, desc="loop", iterable=["a", "b", "c"]):
        seen.append(item)
        clock.now += 1.0
    assert seen == ["a", "b", "c"]
    assert lines() == [  # the first item, then the end
        "loop: step 1/3 (33%) | 1.00 steps/s | 1.0s elapsed, ETA 2.0s",
        "loop: step 3/3 (100%) | 1.00 steps/s | 3.0s elapsed",
    ]


def test_a_job_that_does_nothing_still_logs_one_line(lines):
    clock = Clock()
    with reporter(clock, total=5, initial=5, desc="resumed at the end"):
        pass
    assert lines() == ["resumed at the end: step 5/5 (100%) | 0.0s elapsed"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (3.25, "3.2s"), (9.96, "10s"), (45, "45s"), (70, "1m10s"),
     (3599.6, "1h00m"), (7500, "2h05m")],
)  # fmt: skip
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_on_a_terminal_it_is_a_tqdm_bar_and_logs_nothing(lines):
    out = io.StringIO()
    bar = Progress(total=5, desc="bar", tty=True, file=out, logger=logging.getLogger(LOGGER))
    assert isinstance(bar.bar, progress_module.tqdm)
    bar.set_postfix(loss=1.5)
    bar.update(5)
    bar.close()
    assert "bar" in out.getvalue() and "5/5" in out.getvalue() and "loss=1.5" in out.getvalue()
    assert lines() == []


def test_a_terminal_is_detected_on_the_stream():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with Progress(total=1, desc="d", file=Terminal()) as bar:
        assert bar.bar is not None
    with Progress(total=1, desc="d", file=io.StringIO()) as bar:
        assert bar.bar is None


@pytest.mark.parametrize("tty", [True, False])
def test_disabled_it_shows_nothing(lines, tty):
    out, clock = io.StringIO(), Clock()
    bar = reporter(clock, enabled=False, tty=tty, file=out, iterable=range(3))
    for _ in bar:
        clock.now += 20
    bar.close()
    assert bar.bar is None and out.getvalue() == "" and lines() == []


def test_live_table_is_readable_row_by_row_and_removed(tmp_path):
    path = live_path(tmp_path / "train_log.csv")
    assert path.name == "train_log.partial.csv"
    with LiveTable(path, ["step", "loss", "l0"]) as live:
        assert path.read_text() == "step,loss,l0\n"  # flushed on opening
        live.append([{"step": 5, "loss": 0.25, "l0": float("nan")}])
        assert path.read_text() == "step,loss,l0\n5,0.25,\n"  # flushed per append
        live.append([{"step": np.int64(10), "loss": np.float64(0.125), "l0": 3.0, "extra": 1}])
    assert path.read_text() == "step,loss,l0\n5,0.25,\n10,0.125,3.0\n"
    again = LiveTable(path, ["step", "loss", "l0"])  # opening again starts afresh
    assert path.read_text() == "step,loss,l0\n"
    again.remove()
    assert not path.exists()
