"""Gather the shards of a patching sweep into one table (mechflow.patching.sweeps): refused, and
nothing written, when a shard is missing, repeated or from a sweep of another shard count."""

from __future__ import annotations

from pathlib import Path

from mechflow.steps import parse_and_run, step_parser


def run(shards: list[Path], out: Path) -> None:
    from mechflow.artifacts import read_table, write_table
    from mechflow.patching.sweeps import gather_shards

    write_table(gather_shards([read_table(p) for p in shards], [str(p) for p in shards]), out)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--shards", required=True, nargs="+", type=Path, help="shard tables")
    parser.add_argument("--out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
