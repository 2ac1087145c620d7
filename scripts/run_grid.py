#!/usr/bin/env python
"""Run an experiment grid (fine-tune -> merge -> evals per cell, resumable), then tables and plots.

    python scripts/run_grid.py configs/experiments/mini_smollm2.yaml --smoke     # minutes on 2 CPU cores
    python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --dry_run
    python scripts/run_grid.py GRID.yaml --devices 0,1,2,3          # four cells at a time, one GPU each
    python scripts/run_grid.py GRID.yaml --cpu_workers 2            # no GPU: two cells at a time, cores split
    python scripts/run_grid.py GRID.yaml --emit_slurm slurm/        # Slurm jobs to submit (docs/scale_out.md)

Re-running the same command resumes: finished stages (marker + output present) are skipped. The YAML format
is described in `open_instruct.paper.grid`. Exit status 1 when any stage failed (the others still ran), 2 for a bad
config (`--dry_run` also checks every command line against the modules' own parsers).
"""

import argparse
import logging
from pathlib import Path

from open_instruct.cli import ArgumentParser, run


def device_list(text: str) -> list[str]:
    """``0,1,2,3`` -> ["0", "1", "2", "3"]: device ids as CUDA_VISIBLE_DEVICES takes them, each once."""
    devices = [part.strip() for part in text.split(",")]
    if any(not device or " " in device for device in devices):
        raise argparse.ArgumentTypeError(f"empty or blank entry in {text!r}; expected ids like 0,1,2,3")
    repeated = sorted({device for device in devices if devices.count(device) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"device {repeated[0]!r} appears twice in {text!r}; one cell per device")
    return devices


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="grid YAML")
    parser.add_argument("--smoke", action="store_true", help="apply the file's smoke: overrides (tiny, 1 seed)")
    parser.add_argument("--no_summary", action="store_true", help="skip the tables and plots at the end")
    parser.add_argument("--devices", type=device_list, metavar="ID,ID,...",
                        help="run cells in parallel, one per device at a time, each cell's stages seeing only its "
                             "device (CUDA_VISIBLE_DEVICES); default: one cell after another, all devices visible")
    parser.add_argument("--cpu_workers", type=positive, metavar="K",
                        help="without GPUs: run K cells side by side, each with cores // K threads "
                             "(OMP_NUM_THREADS), which trains small models faster than one cell on all cores")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="print every stage's command and exit")
    mode.add_argument("--summary_only", action="store_true", help="only rebuild the tables and plots")
    mode.add_argument("--prepare_only", action="store_true", help="only run the grid's prepare stages")
    mode.add_argument("--cell", metavar="INDEX|FOLDER",
                      help="run one cell (0-based index in the grid's order, or its folder), after the prepare "
                           "stages if they are not done; no summary")
    mode.add_argument("--emit_slurm", metavar="DIR", type=Path,
                      help="write Slurm jobs for the grid into DIR (cells.txt, prepare/cells/summary.sbatch, "
                           "submit.sh) and run nothing")
    slurm = parser.add_argument_group("Slurm jobs (with --emit_slurm)")
    slurm.add_argument("--gpus_per_cell", type=positive, metavar="N", help="ask each cell's task for N GPUs "
                       "(#SBATCH --gres=gpu:N); default: no GPU request")
    slurm.add_argument("--max_running", type=positive, metavar="K",
                       help="at most K cells running at once (#SBATCH --array=0-(N-1)%%K)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices and args.cpu_workers:
        parser.error("--devices (GPUs) and --cpu_workers (CPU shares) are two ways to run cells in parallel; give one")
    parallel = "--devices" if args.devices else "--cpu_workers" if args.cpu_workers else None
    if parallel and (args.cell or args.emit_slurm or args.summary_only or args.prepare_only or args.dry_run):
        parser.error(f"{parallel} runs the whole grid; it does not combine with --cell, --emit_slurm, "
                     "--summary_only, --prepare_only or --dry_run")
    if (args.gpus_per_cell or args.max_running) and not args.emit_slurm:
        parser.error("--gpus_per_cell and --max_running shape the jobs of --emit_slurm; give --emit_slurm DIR")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from open_instruct.paper.grid import (
        GridResult,
        cpu_shares,
        load_config,
        run_grid,
        run_prepare,
        subprocess_runner,
        write_summary,
    )

    config = load_config(args.config, smoke=args.smoke)  # a bad config: one `error:` line, exit status 2
    output_dir = Path(config["output_dir"])
    if args.summary_only:
        write_summary(config, output_dir)
        return 0
    if args.prepare_only:
        return 0 if run_prepare(config, output_dir, subprocess_runner, GridResult()) else 1
    if args.emit_slurm:
        from open_instruct.paper.grid import check_commands
        from open_instruct.paper.slurm import emit_slurm

        check_commands(config)  # a job that would fail on its parser fails here instead, before anything queues
        paths = emit_slurm(config, args.config, args.smoke, args.emit_slurm, args.gpus_per_cell or 0,
                           args.max_running)
        print(f"wrote {', '.join(p.name for p in paths)} to {args.emit_slurm}; submit with: "
              f"bash {args.emit_slurm / 'submit.sh'}")
        return 0
    result = run_grid(config, summarize=not args.no_summary, dry_run=args.dry_run,
                      devices=args.devices or (cpu_shares(args.cpu_workers) if args.cpu_workers else None),
                      only=args.cell)
    if not args.dry_run:
        print(f"{result.cells} cells: {result.stages_run} stage(s) run, {result.stages_skipped} already done, "
              f"{len(result.failures)} failed")
    return 1 if result.failures else 0


if __name__ == "__main__":
    run(main)
