#!/usr/bin/env python
"""Write a results folder (summary.md with provenance and paired comparison, summary.csv, plots) from run folders.

    python scripts/report_results.py output/mini_smollm2_cpu --task mini --output_dir docs/results/mini_smollm2_cpu
    python scripts/report_results.py output/frontier_smollm2_cpu --task frontier \
        --output_dir docs/results/frontier_smollm2_cpu

See `open_instruct.paper.report` for what each file holds.
"""

import argparse
from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, run
from open_instruct.paper.report import write_report
from open_instruct.paper.summarize import TASKS


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders to scan for runs (recursively)")
    parser.add_argument("--task", choices=sorted(TASKS), default="mini")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--frontier", action=argparse.BooleanOptionalAction, default=None,
                        help="frontier plots (score vs trainable parameters, 95%% t-intervals) and PRoLoRA/MoS vs "
                             "LoRA at matched budgets (default: on for --task frontier, off otherwise)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.roots, args.task, args.output_dir, frontier=args.frontier))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return 0


if __name__ == "__main__":
    run(main)
