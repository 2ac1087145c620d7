"""A stand-in for every grid stage (prepare, finetune, merge, eval): it writes what the real stage leaves, so
the grid runner's scheduling can be tested in seconds (tests/test_grid_scaleout.py, scripts/slurm_check.sh).
With STANDIN_EVENTS set it appends a start and an end event per stage (kind, cell, stage, CUDA_VISIBLE_DEVICES);
STANDIN_SECONDS makes each stage last that long."""
import json
import os
import pathlib
import sys
import time


def main():
    argv = sys.argv[1:]
    def get(name):
        return argv[argv.index(name) + 1]
    if '--make' in argv:
        what = ('prepare', 'prepare')
    elif '--save_dir' in argv:
        what = (pathlib.Path(get('--save_dir')).parent.parent.name, 'eval')
    elif '--lora_model_name_or_path' in argv:
        what = (pathlib.Path(get('--output_dir')).parent.name, 'merge')
    else:
        what = (pathlib.Path(get('--output_dir')).name, 'finetune')
    events = os.environ.get('STANDIN_EVENTS')
    def event(kind):
        if not events:
            return
        with open(events, 'a') as f:
            f.write(json.dumps([kind, *what, os.environ.get('CUDA_VISIBLE_DEVICES')]) + '\n')
    event('start')
    time.sleep(float(os.environ.get('STANDIN_SECONDS', '0')))
    if '--make' in argv:
        pathlib.Path(get('--make')).write_text('data')
    elif '--save_dir' in argv:
        out = pathlib.Path(get('--save_dir'))
        out.mkdir(parents=True, exist_ok=True)
        (out / 'metrics.json').write_text(json.dumps({'exact_match': 0.5}))
    elif '--lora_model_name_or_path' in argv:
        out = pathlib.Path(get('--output_dir'))
        out.mkdir(parents=True, exist_ok=True)
        (out / 'config.json').write_text('{}')
    else:
        out = pathlib.Path(get('--output_dir'))
        (out / 'all_results.json').write_text(json.dumps({'trainable_params': 7, 'eval_loss': 2.5}))
        (out / 'completed').write_text('')
    event('end')


if __name__ == '__main__':  # the grid's check imports it too
    main()
