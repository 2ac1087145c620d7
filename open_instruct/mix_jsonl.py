"""``python -m open_instruct.mix_jsonl``: the command name kept for the grids' ``prepare`` steps; the mixing is
`open_instruct.data.mix`."""

from open_instruct.cli import run
from open_instruct.data.mix import main

if __name__ == "__main__":
    run(main)
