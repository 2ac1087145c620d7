"""Mix jsonl training files into one, in a fixed shuffled order: e.g. ASDiv + BIG-bench for the mini grid.

    python -m open_instruct.mix_jsonl --output data/processed/mix/train.jsonl \\
        data/processed/asdiv/asdiv_data.jsonl data/processed/bigbench/bigbench_data.jsonl:600

``file:N`` keeps N records of that file drawn at random (all without ``:N``). Draws and the final order are
fixed by ``--seed``; the output is written atomically, so a grid's ``prepare`` step can create the file once and
skip it after.
"""

from __future__ import annotations

import random

from open_instruct.cli import ArgumentParser, UsageError
from open_instruct.io_utils import iter_jsonl, write_jsonl


def parse_source(spec: str) -> tuple[str, int | None]:
    path, _, count = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
    return path, int(count) if count else None


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sources", nargs="+", help="jsonl files, each optionally as file:N (N of its records)")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    for spec in args.sources:
        path, count = parse_source(spec)
        try:
            records = [record for _, record in iter_jsonl(path)]
        except ValueError as err:  # unreadable file or bad JSON, naming path (and line)
            raise UsageError(str(err)) from None
        rng.shuffle(records)
        rows.extend(records[:count])
    rng.shuffle(rows)
    n = write_jsonl(args.output, rows)
    print(f"{args.output}: {n} records")
    return 0
