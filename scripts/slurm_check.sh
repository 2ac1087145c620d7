#!/bin/bash
# Check `run_grid.py --emit_slurm` on a real Slurm: a one-node cluster on localhost (2 CPUs, munge auth), started
# here in a scratch folder, runs the emitted prepare, array and summary jobs of a grid whose stages are a tiny
# stand-in module; then every cell must have all its stage markers, and the summary job must have started after the
# last array task ended. The daemons are stopped at the end (by their pid files). Needs root (munged, slurmd);
# installs slurm-wlm and munge with apt-get when sbatch is missing.
#
#   bash scripts/slurm_check.sh [SCRATCH_DIR]      # prints "slurm_check: OK" and the seconds it took
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
dir=${1:-$(mktemp -d)}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
start=$(date +%s)
[ "$(id -u)" = 0 ] || { echo "error: slurm_check.sh starts munged and slurmd: run it as root" >&2; exit 2; }
if ! command -v sbatch > /dev/null || ! command -v slurmctld > /dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > "$dir/apt.log"
fi

# ---- a one-node cluster: munged on its own socket, slurmctld and slurmd on their own ports, all state in $dir
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
key=$dir/munge/munge.key
dd if=/dev/urandom of="$key" bs=1024 count=1 status=none && chmod 400 "$key"
node=$(hostname -s)
cat > "$dir/slurm.conf" <<EOF
ClusterName=gridcheck
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
SlurmctldPort=${SLURM_CHECK_PORT:-16817}
SlurmdPort=$(( ${SLURM_CHECK_PORT:-16817} + 1 ))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=check Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf

stop() {
    for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -s "$pid_file" ] && kill "$(cat "$pid_file")" 2> /dev/null || true
    done
}
trap stop EXIT
munged --force --socket="$dir/munge/socket" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N "$node"
for _ in $(seq 60); do
    sinfo -h -N -o %T 2> /dev/null | grep -q idle && break
    sleep 1
done
sinfo -h -N -o %T | grep -q idle || { echo "error: the node did not come up; see $dir/slurmd.log" >&2; exit 1; }

# ---- a grid of trivial stages: prepare writes a file, finetune/merge/eval write what the real ones leave
mkdir -p "$dir/standins"
cp "$repo/tests/helpers/standin_stage.py" "$dir/standins/"  # the stand-in the grid tests use too
cat > "$dir/grid.yaml" <<EOF
name: slurmcheck
model: m
output_dir: out
seeds: [1, 2]
prepare: [{module: standin_stage, args: {make: data.txt}, creates: data.txt}]
modules: {finetune: standin_stage, merge: standin_stage}
evals: {a: {module: standin_stage}}
summary: {task: mini}
methods: [{name: base, method: base}, {name: lora, method: lora, r: [2, 4]}]
EOF
export PYTHONPATH=$dir/standins:$repo HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$dir"
"$python" "$repo/scripts/run_grid.py" grid.yaml --emit_slurm slurm --max_running 2
for job in prepare cells summary; do  # Slurm's own check of each script (queues nothing)
    sbatch --test-only "slurm/$job.sbatch" 2>&1 | grep -q "to start at" || { echo "error: sbatch --test-only rejects slurm/$job.sbatch" >&2; exit 1; }
done
submitted=$(bash slurm/submit.sh)
echo "$submitted"
array=$(sed -E 's/.*cells array job ([0-9]+).*/\1/' <<< "$submitted")
summary=$(sed -E 's/.*summary job ([0-9]+).*/\1/' <<< "$submitted")
for _ in $(seq 300); do
    [ -z "$(squeue -h -o %i)" ] && break
    sleep 1
done
[ -z "$(squeue -h -o %i)" ] || { echo "error: jobs still queued after 300 s:"; squeue; exit 1; } >&2

# ---- every cell finished, each array task exited 0, the summary ran after the last cell
cells=$(wc -l < slurm/cells.txt)
while read -r cell; do
    want=3; [ "$cell" = base ] && want=1
    got=$(ls "out/$cell/.grid/"*.done 2> /dev/null | wc -l)
    [ "$got" = "$want" ] || { echo "error: $cell has $got of $want stage markers" >&2; exit 1; }
done < slurm/cells.txt
tasks=$(scontrol -o show job "$array" | grep -c "JobState=COMPLETED")
[ "$tasks" = "$cells" ] || { echo "error: $tasks of $cells array tasks completed" >&2; scontrol show job "$array" >&2; exit 1; }
last_end=$(scontrol -o show job "$array" | grep -o "EndTime=[^ ]*" | cut -d= -f2 | sort | tail -1)
summary_start=$(scontrol -o show job "$summary" | grep -o "StartTime=[^ ]*" | cut -d= -f2)
scontrol -o show job "$summary" | grep -q "JobState=COMPLETED" || { echo "error: summary job did not complete" >&2; exit 1; }
[[ ! "$summary_start" < "$last_end" ]] || { echo "error: summary started $summary_start before $last_end" >&2; exit 1; }
[ -f out/summary/summary_mini.md ] || { echo "error: no out/summary/summary_mini.md" >&2; exit 1; }
ls slurm/logs/cell_"$array"_*.out > /dev/null

# ---- submitting again resumes: every task finds its stages done and runs none
bash slurm/submit.sh > /dev/null
for _ in $(seq 300); do
    [ -z "$(squeue -h -o %i)" ] && break
    sleep 1
done
rerun=$(cat slurm/logs/cell_*.out | grep -c "cells: 0 stage(s) run")
[ "$rerun" = "$cells" ] || { echo "error: on resubmission $rerun of $cells cells ran nothing" >&2; exit 1; }
echo "slurm_check: OK ($cells cells, array job $array, resubmitted: nothing rerun; summary started $summary_start after the last cell ended" \
    "$last_end; $(( $(date +%s) - start )) s)"
