"""Write a grid as Slurm jobs: a prepare job, an array job with one task per cell, a summary job, and submit.sh.

Nothing runs when the files are written. Each array task runs ``scripts/run_grid.py CONFIG --cell FOLDER``: the
same resumable cell as the local runner (finished stages skipped, fine-tuning from its last checkpoint), so
resubmitting resumes. Files written to the emit folder::

    cells.txt         one cell folder per line; array task i runs line i+1 (the grid's own cell order)
    prepare.sbatch    run_grid.py CONFIG --prepare_only       (the grid's one-off prepare stages)
    cells.sbatch      #SBATCH --array=0-(N-1)[%K]; run_grid.py CONFIG --cell <line of cells.txt>
    summary.sbatch    run_grid.py CONFIG --summary_only       (tables and plots of whatever finished)
    submit.sh         sbatch --parsable each, chained: cells after prepare (afterok), summary after cells (afterany)
    logs/             Slurm's own output of each job (cell_<array job>_<task>.out); stage logs stay in <cell>/logs/

The cells wait for ``afterok`` on prepare: without its data no cell can run, and ``--kill-on-invalid-dep=yes``
cancels them instead of leaving them pending forever. The summary waits for ``afterany`` on the array: one failed
cell (exit status 1) must not withhold the table of the others -- the summarizer marks missing results, as the local
runner summarises after failures too -- and an ``afterok`` summary would never run after any failure.
A task names its cell by folder, not by index, so a grid file edited after the emit fails loudly (no such cell)
rather than running some other cell.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

from open_instruct.io_utils import write_text
from open_instruct.paper.grid import REPO_ROOT, expand_cells

RUN_GRID = REPO_ROOT / "scripts" / "run_grid.py"


def _job(name: str, log: str, run_grid_args: list[str], extra: list[str], body: str = "") -> str:
    """One sbatch script: its #SBATCH lines, then run_grid.py with `run_grid_args` (after an optional `body`)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={log}",
             f"#SBATCH --chdir={shlex.quote(os.getcwd())}", *[f"#SBATCH {option}" for option in extra],
             "set -euo pipefail", body.rstrip(),
             f"exec {shlex.quote(sys.executable)} {shlex.quote(str(RUN_GRID))} {' '.join(run_grid_args)}", ""]
    return "\n".join(line for line in lines if line)


def emit_slurm(config: dict, config_path: str, smoke: bool, out_dir: Path, gpus_per_cell: int = 0,
               max_running: Optional[int] = None) -> list[Path]:
    """Write the Slurm files of a loaded grid into `out_dir` (see the module docstring); returns their paths.

    `gpus_per_cell` > 0 asks each array task for that many GPUs (``--gres=gpu:N``); `max_running` caps how many
    array tasks run at once (``--array=0-(N-1)%K``). The jobs run in the current folder (``--chdir``), where the
    grid's relative paths (output_dir, data) mean what they mean here."""
    out_dir = out_dir.resolve()
    cells = expand_cells(config)
    grid = [shlex.quote(str(Path(config_path).resolve())), *(["--smoke"] if smoke else [])]
    name = config.get("name") or Path(config_path).stem
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cells_file = out_dir / "cells.txt"
    array = f"--array=0-{len(cells) - 1}" + (f"%{max_running}" if max_running else "")
    cell_options = [array, *([f"--gres=gpu:{gpus_per_cell}"] if gpus_per_cell > 0 else [])]
    pick = (f'cell=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(cells_file))})\n'
            f'[ -n "$cell" ] || {{ echo "error: no line $((SLURM_ARRAY_TASK_ID + 1)) in {cells_file}" >&2; exit 2; }}')
    files = {
        "cells.txt": "".join(f"{cell.folder}\n" for cell in cells),
        "prepare.sbatch": _job(f"{name}-prepare", f"{logs}/prepare_%j.out", [*grid, "--prepare_only"], []),
        "cells.sbatch": _job(f"{name}-cells", f"{logs}/cell_%A_%a.out", [*grid, "--cell", '"$cell"'], cell_options,
                             pick),
        "summary.sbatch": _job(f"{name}-summary", f"{logs}/summary_%j.out", [*grid, "--summary_only"], []),
        "submit.sh": "\n".join([
            "#!/bin/bash",
            f"# Submit grid {name} ({len(cells)} cells): prepare -> cells (array) -> summary. Arguments go to every",
            "# sbatch (e.g. --partition=gpu). Submitting again resumes: finished stages are skipped.",
            "set -euo pipefail",
            'here=$(cd "$(dirname "$0")" && pwd)',
            'prepare=$(sbatch --parsable "$@" "$here/prepare.sbatch"); prepare=${prepare%%;*}',
            'cells=$(sbatch --parsable "$@" --dependency=afterok:"$prepare" --kill-on-invalid-dep=yes '
            '"$here/cells.sbatch"); cells=${cells%%;*}',
            'summary=$(sbatch --parsable "$@" --dependency=afterany:"$cells" "$here/summary.sbatch"); '
            'summary=${summary%%;*}',
            f'echo "prepare job $prepare, cells array job $cells ({len(cells)} tasks), summary job $summary"', ""]),
    }
    paths = []
    for file_name, text in files.items():
        path = out_dir / file_name
        write_text(path, text)
        if path.suffix in (".sh", ".sbatch"):
            path.chmod(0o755)
        paths.append(path)
    return paths
