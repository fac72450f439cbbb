"""The generic table step (``mechflow.steps.render_table``): tidy CSV in, an HTML table out that the
Snakemake report shows inline; pivots, marks and refusals name the file or flag."""

from __future__ import annotations

import itertools
import math
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from mechflow.artifacts import write_table
from mechflow.steps import render_table
from mechflow.steps.render_table import format_value


class _Cells(HTMLParser):
    """The page's heading, header cells and body rows, each cell as (text, classes)."""

    def __init__(self):
        super().__init__()
        self.h1, self.header, self.rows, self.notes = "", [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and self._in != "thead":
            self.rows.append([])
        if tag in ("thead", "tbody"):
            self._in = tag
        if tag in ("th", "td", "h1") or (tag == "p" and attrs.get("class") == "note"):
            self._cell = [tag, "", set((attrs.get("class") or "").split())]

    def handle_data(self, data):
        if getattr(self, "_cell", None):
            self._cell[1] += data

    def handle_endtag(self, tag):
        cell = getattr(self, "_cell", None)
        if cell and tag == cell[0]:
            if tag == "h1":
                self.h1 = cell[1]
            elif tag == "th":
                self.header.append(cell[1])
            elif tag == "td":
                self.rows[-1].append((cell[1], cell[2]))
            else:
                self.notes.append(cell[1])
            self._cell = None


def parse(path):
    cells = _Cells()
    cells.feed(path.read_text(encoding="utf-8"))
    return cells


def head_scores(model="toy-2l"):
    values = {("induction", 1, 2): 0.81234, ("previous_token", 0, 1): 0.45}
    rows = [
        (model, layer, head, score, values.get((score, layer, head), 0.05 + 0.01 * head))
        for score, layer, head in itertools.product(
            ("previous_token", "duplicate_token", "induction"), range(2), range(4)
        )
    ]
    return pd.DataFrame(rows, columns=["model", "layer", "head", "score", "value"])


def render(tmp_path, tables, *flags, out="table.html"):
    argv = ["--table", *map(str, tables), "--title", "toy-2l: heads", *flags]
    render_table.main([*argv, "--out", str(tmp_path / out)])
    return tmp_path / out


def test_long_table_made_wide_with_the_heads_above_the_threshold_marked(tmp_path):
    write_table(head_scores(), tmp_path / "head_scores.csv")
    argv = ["--index", "layer", "head", "--pivot", "score", "--values", "value"]
    page = parse(render(tmp_path, [tmp_path / "head_scores.csv"], *argv, "--mark-above", "0.4"))
    assert page.h1 == "toy-2l: heads"
    # the scores in the table's own order (not alphabetical), then the marks' column
    assert page.header == [
        "layer", "head", "previous_token", "duplicate_token", "induction", "above 0.4"
    ]  # fmt: skip
    assert len(page.rows) == 8  # one row per head
    rows = {(int(r[0][0]), int(r[1][0])): r for r in page.rows}
    induction = rows[(1, 2)]
    assert induction[4] == ("0.8123", {"num", "mark"})  # 4 significant digits, marked
    assert induction[5][0] == "induction"
    assert rows[(0, 1)][2][1] == {"num", "mark"} and rows[(0, 1)][5][0] == "previous_token"
    marked = [key for key, r in rows.items() if any("mark" in c for _, c in r)]
    assert sorted(marked) == [(0, 1), (1, 2)]
    assert rows[(0, 0)][5][0] == "" and rows[(0, 0)][2] == ("0.05", {"num"})
    assert any("above 0.4" in note for note in page.notes)


def test_several_tables_are_concatenated_and_cut_to_the_shown_columns(tmp_path):
    paths = []
    for sae, l0 in (("relu_1", 20.0), ("topk_8", 8.0)):
        rows = [(sae, "blocks.0.hook_resid_post", sae.split("_")[0], m, v)
                for m, v in (("n_tokens", 100.0), ("l0", l0), ("fvu", 0.123456))]  # fmt: skip
        paths.append(tmp_path / f"{sae}_metrics.csv")
        write_table(pd.DataFrame(rows, columns=["sae", "hook", "architecture", "metric", "value"]),
                    paths[-1])  # fmt: skip
    argv = ["--index", "sae", "architecture", "--pivot", "metric", "--values", "value"]
    page = parse(render(tmp_path, paths, *argv, "--show", "sae", "l0", "fvu"))
    assert page.header == ["sae", "l0", "fvu"]
    assert [[text for text, _ in row] for row in page.rows] == [
        ["relu_1", "20", "0.1235"],
        ["topk_8", "8", "0.1235"],
    ]
    assert page.rows[0][0][1] == set()  # text is not a number: left-aligned
    assert all(str(p) in page.notes[-1] for p in paths)  # where the numbers come from


def test_a_plain_table_with_booleans_and_text_is_escaped(tmp_path):
    checks = pd.DataFrame(
        {
            "model": ["run"] * 2,
            "check": ["few_key_frequencies", "restricted_loss_falls_first"],
            "value": [3.0, float("nan")],
            "threshold": [8.0, 175.0],
            "passed": [True, False],
            "meaning": ["at least one", "first epoch loss < 1 nat"],
        }
    )
    write_table(checks, tmp_path / "checks.csv")
    out = render(tmp_path, [tmp_path / "checks.csv"], "--show", "check", "value", "passed",
                 "meaning")  # fmt: skip
    page = parse(out)
    assert [[text for text, _ in row] for row in page.rows] == [
        ["few_key_frequencies", "3", "yes", "at least one"],
        ["restricted_loss_falls_first", "–", "no", "first epoch loss < 1 nat"],
    ]
    assert page.rows[0][2][1] == set()  # a boolean is not aligned as a number
    assert "&lt; 1 nat" in out.read_text()  # the text is escaped, the markup is ours


def test_a_rerun_writes_the_same_bytes(tmp_path):
    write_table(head_scores(), tmp_path / "head_scores.csv")
    argv = ["--index", "layer", "head", "--pivot", "score", "--values", "value"]
    first = render(tmp_path, [tmp_path / "head_scores.csv"], *argv, out="a.html").read_bytes()
    second = render(tmp_path, [tmp_path / "head_scores.csv"], *argv, out="b.html").read_bytes()
    assert first == second and first.startswith(b"<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--show", "layer", "nope"], r"head_scores\.csv: missing column\(s\) 'nope'"),
        (["--index", "layer", "--pivot", "score"], "--index, --pivot and --values go together"),
        (["--index", "layer", "--pivot", "score", "--values", "value"], "more than one row for"),
        (["--index", "layer", "head", "--pivot", "kind", "--values", "value"], r"'kind'"),
        (["--show", "model", "--mark-above", "0.4"], "no numeric columns to mark"),
    ],
)
def test_refusals_name_the_file_or_flag_and_write_nothing(tmp_path, flags, match):
    write_table(head_scores(), tmp_path / "head_scores.csv")
    with pytest.raises(ValueError, match=match):
        render(tmp_path, [tmp_path / "head_scores.csv"], *flags)
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*"))


def test_out_must_be_html_and_the_table_must_have_rows(tmp_path):
    write_table(head_scores(), tmp_path / "head_scores.csv")
    with pytest.raises(ValueError, match=r"--out must end in \.html"):
        render(tmp_path, [tmp_path / "head_scores.csv"], out="table.csv")
    write_table(head_scores().iloc[:0], tmp_path / "empty.csv")
    with pytest.raises(ValueError, match=r"empty\.csv: table has no rows"):
        render(tmp_path, [tmp_path / "empty.csv"])
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        render(tmp_path, [tmp_path / "missing.csv"])


def test_format_value():
    assert format_value(0.123456) == "0.1235" and format_value(150.0) == "150"
    assert format_value(4032.0) == "4032" and format_value(13300.0) == "13300"
    assert format_value(12345.67) == "12346" and format_value(2.5e-5) == "2.5e-05"
    assert format_value(math.inf) == "∞"
    assert format_value(math.nan) == "–" and format_value(None) == "–"
    assert format_value(True) == "yes" and format_value(3) == "3"
    assert re.fullmatch(r"-0\.5", format_value(-0.5))
