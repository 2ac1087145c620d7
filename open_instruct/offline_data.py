"""``python -m open_instruct.offline_data {eval,train}``: the documented command name (scripts/prepare_*_data.sh, the
grids' ``prepare`` steps), kept; the builders are `open_instruct.data.offline`."""

from open_instruct.data.offline import main

if __name__ == "__main__":
    main()
