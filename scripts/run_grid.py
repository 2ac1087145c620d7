#!/usr/bin/env python
"""Run an experiment grid (fine-tune -> merge -> evals per cell, resumable), then tables and plots.

    python scripts/run_grid.py configs/experiments/mini_smollm2.yaml --smoke     # minutes on 2 CPU cores
    python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --dry_run

Re-running the same command resumes: finished stages (marker + output present) are skipped. The YAML format
is described in `open_instruct.paper.grid`. Exit status 1 when any stage failed (the others still ran), 2 for a bad
config (`--dry_run` also checks every command line against the modules' own parsers).
"""

import logging

from open_instruct.cli import ArgumentParser, run
from open_instruct.paper.grid import load_config, run_grid, write_summary


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="grid YAML")
    parser.add_argument("--smoke", action="store_true", help="apply the file's smoke: overrides (tiny, 1 seed)")
    parser.add_argument("--dry_run", action="store_true", help="print every stage's command and exit")
    parser.add_argument("--summary_only", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--no_summary", action="store_true", help="skip the tables and plots at the end")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = load_config(args.config, smoke=args.smoke)  # a bad config: one `error:` line, exit status 2
    if args.summary_only:
        from pathlib import Path

        write_summary(config, Path(config["output_dir"]))
        return 0
    result = run_grid(config, summarize=not args.no_summary, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{result.cells} cells: {result.stages_run} stage(s) run, {result.stages_skipped} already done, "
              f"{len(result.failures)} failed")
    return 1 if result.failures else 0


if __name__ == "__main__":
    run(main)
