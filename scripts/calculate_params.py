#!/usr/bin/env python
"""Trainable-parameter counts of LoRA / PRoLoRA / MoS / VeRA / Tied-LoRA per model and rank (Markdown, CSV, PNG).

    python scripts/calculate_params.py                                   # Llama-2-7B and 13B, default methods
    python scripts/calculate_params.py --model offline:smollm2 --ranks 8 16 --methods lora prolora:u=1:m=2:n=2
    python scripts/calculate_params.py --model path/to/config.json --modules q_proj v_proj --output_dir out/

Methods: lora, vera, tied_lora, prolora[:u=U][:m=M][:n=N], mos[:R=R][:p=P][:l=L] (R: the pool's equivalent rank,
default r). Models: llama2-7b, llama2-13b, smollm2-135m, offline:smollm2, or a config.json / model folder.
Formulas: `open_instruct.paper.params`.
"""

from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, run
from open_instruct.io_utils import write_text
from open_instruct.paper.params import (
    LLAMA_PROJECTIONS,
    params_table,
    parse_method_spec,
    plot_params_vs_rank,
    resolve_model_dims,
    rows_to_markdown,
)
from open_instruct.paper.summarize import to_csv

DEFAULT_METHODS = ["lora", "prolora:u=0:m=2:n=2", "prolora:u=1:m=2:n=2", "prolora:u=1:m=4:n=4", "mos:R=1:l=4",
                   "mos:R=2:p=1:l=4", "vera", "tied_lora"]


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["llama2-7b", "llama2-13b"], help="models (see above)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="method specs (see above)")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--modules", nargs="+", default=list(LLAMA_PROJECTIONS), help="adapted projections")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="write params.md, params.csv and params_vs_rank.png here (default: print only)")
    args = parser.parse_args(argv)
    try:
        for text in args.methods:  # every spec at every rank is checked before a formula imports torch and peft
            for r in args.ranks:
                parse_method_spec(text, r)
        rows = params_table([resolve_model_dims(m) for m in args.model], args.methods, args.ranks, args.modules)
    except ValueError as err:
        raise UsageError(str(err)) from None
    markdown = rows_to_markdown(rows)
    print(markdown)
    if args.output_dir:
        write_text(args.output_dir / "params.md", markdown)
        write_text(args.output_dir / "params.csv", to_csv(list(rows[0]), rows))
        plot_params_vs_rank(rows, args.output_dir / "params_vs_rank.png")
        print(f"wrote {args.output_dir}/params.md, params.csv, params_vs_rank.png")
    return 0


if __name__ == "__main__":
    run(main)
