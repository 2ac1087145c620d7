#!/usr/bin/env python
"""Summarize run folders into paper-style tables (Markdown + CSV), one tool for every benchmark.

    python scripts/summarize_results.py output/paper_llama2_7b_superni_mmlu --task mmlu --output_dir results/
    python scripts/summarize_results.py output/mini_smollm2 --task mini --skip_partial

Tasks: mmlu, tydiqa, gsm, bbh, codex, paper (one headline column per benchmark + average), mini (held-out loss,
ASDiv, BIG-bench), training (losses and time). Writes summary_<task>.md, summary_<task>.csv and runs.csv.
Where each number is read from: `METRIC_SOURCES` in `open_instruct.paper.summarize`.
"""

from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, run
from open_instruct.paper.summarize import TASKS, summarize


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders to scan for runs (recursively)")
    parser.add_argument("--task", choices=sorted(TASKS), default="paper", help="which columns to tabulate")
    parser.add_argument("--output_dir", type=Path, default=None, help="where the tables go (default: first root)")
    parser.add_argument("--skip_partial", action="store_true", help="leave out runs without a `completed` marker")
    parser.add_argument("--reference_r", type=int, default=None,
                        help="rank of the LoRA row for the '%% LoRA r=R' column (default: smallest LoRA rank)")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.roots, args.task, args.output_dir or args.roots[0], args.skip_partial, args.reference_r))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return 0


if __name__ == "__main__":
    run(main)
