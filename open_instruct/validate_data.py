"""``python -m open_instruct.validate_data``: the command name open-instruct users know, kept; the checks are
`open_instruct.data.validate`."""

from open_instruct.cli import run
from open_instruct.data.validate import main

if __name__ == "__main__":
    run(main)  # exit status 1 is main's verdict (some file is invalid); a usage error is 2 and one `error:` line
