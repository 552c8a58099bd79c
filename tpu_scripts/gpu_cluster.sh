#!/usr/bin/env bash
# Multi-node GPU jobs for genrec: one process per node, all of a node's GPUs.
#
#   tpu_scripts/gpu_cluster.sh [--dry_run] slurm NODES GPUS_PER_NODE GIN_FILE WORKDIR [gin bindings...]
#   tpu_scripts/gpu_cluster.sh [--dry_run] node COORDINATOR_HOST:PORT NUM_NODES NODE_ID GIN_FILE WORKDIR [gin bindings...]
#
# slurm writes a batch script (WORKDIR/slurm_job.sh) and submits it with
# sbatch: srun starts main.py once per node with --multiprocess, and
# jax.distributed.initialize() reads the job from SLURM's variables.
# node runs this node's process of a job started by hand (or by another
# scheduler): run it on every node with the same coordinator (node 0's
# host:port) and its own NODE_ID; it sets JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID, which main.py reads.
# The checkout is installed on every node (pip install -e '.[train,gpu]') and
# WORKDIR is on a shared filesystem. --dry_run prints the exact commands (and
# the batch script) instead of running them.
set -euo pipefail

# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"  # run, usage_lines, DRY_RUN (consumes --dry_run)

usage() {
  usage_lines 2 16
}

[ $# -ge 1 ] || usage
COMMAND=$1
shift
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

main_args() {  # GIN_FILE WORKDIR [bindings...] -> main.py's arguments, quoted
  local args
  args="--gin_file=$(printf '%q' "$1") --workdir=$(printf '%q' "$2")"
  shift 2
  for binding in "$@"; do
    args+=" --gin_bindings=$(printf '%q' "$binding")"
  done
  printf '%s' "$args"
}

case "$COMMAND" in
  slurm)
    [ $# -ge 4 ] || usage
    NODES=$1 GPUS=$2 GIN_FILE=$3 WORKDIR=$4
    shift 4
    SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=genrec
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --output=$WORKDIR/slurm-%j.log
set -euo pipefail
cd $(printf '%q' "$REPO_ROOT")
srun python main.py --multiprocess $(main_args "$GIN_FILE" "$WORKDIR" "$@")"
    if [ "$DRY_RUN" = 1 ]; then
      printf '%s\n' "$SCRIPT"
    else
      mkdir -p "$WORKDIR"
      printf '%s\n' "$SCRIPT" > "$WORKDIR/slurm_job.sh"
    fi
    run sbatch "$WORKDIR/slurm_job.sh"
    ;;
  node)
    [ $# -ge 5 ] || usage
    COORDINATOR=$1 NUM_NODES=$2 NODE_ID=$3 GIN_FILE=$4 WORKDIR=$5
    shift 5
    ARGS=(--gin_file="$GIN_FILE" --workdir="$WORKDIR")
    for binding in "$@"; do
      ARGS+=(--gin_bindings="$binding")
    done
    run env JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" \
      JAX_PROCESS_ID="$NODE_ID" python "$REPO_ROOT/main.py" "${ARGS[@]}"
    ;;
  *)
    usage
    ;;
esac
