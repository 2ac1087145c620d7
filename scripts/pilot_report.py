#!/usr/bin/env python
"""Write the power pilot's report (pilot.md, pilot.csv, pilot_steps.png, archived runs) from its run folders.

    python scripts/pilot_report.py output/pilot_smollm2_cpu --output_dir docs/results/pilot --heldout_tokens 1619

See `open_instruct.paper.pilot` for what each file holds and how every number is defined.
"""

from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, run


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders to scan for runs (recursively)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--heldout_tokens", type=int, default=None,
                        help="answer tokens the held-out token accuracy is measured on (the N of its binomial "
                             "error); without it that error is not reported")
    args = parser.parse_args(argv)
    if args.heldout_tokens is not None and args.heldout_tokens < 1:
        raise UsageError(f"--heldout_tokens must be >= 1, got {args.heldout_tokens}")
    for root in args.roots:
        if not root.is_dir():
            raise UsageError(f"results folder {root} does not exist")
    from open_instruct.paper.pilot import write_pilot_report  # matplotlib and tensorboard load only now

    try:
        print(write_pilot_report(args.roots, args.output_dir, args.heldout_tokens))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return 0


if __name__ == "__main__":
    run(main)
