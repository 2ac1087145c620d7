"""``python -m open_instruct.reformat_datasets``: the command name open-instruct users know, kept; the converters
are `open_instruct.data.convert`."""

from open_instruct.cli import run
from open_instruct.data.convert import main

if __name__ == "__main__":
    run(main)  # any expected failure (a raw file in the wrong layout, an unreadable file, ...) is one `error:` line
