#!/usr/bin/env bash
# Cloud TPU VM pod slices for genrec: create, install, run a gin experiment on
# every worker, fetch logs, delete. gcloud must be installed and logged in.
#
#   tpu_scripts/pod.sh [--dry_run] create  TPU_NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]
#   tpu_scripts/pod.sh [--dry_run] install TPU_NAME ZONE
#   tpu_scripts/pod.sh [--dry_run] run     TPU_NAME ZONE GIN_FILE WORKDIR [gin bindings...]
#   tpu_scripts/pod.sh [--dry_run] logs    TPU_NAME ZONE DEST_DIR
#   tpu_scripts/pod.sh [--dry_run] delete  TPU_NAME ZONE
#
# install copies this checkout to every worker and installs it with the train
# and tpu extras. run starts main.py on all workers at once with
# --multiprocess (jax.distributed.initialize() finds the pod's workers itself),
# its output in ~/genrec_run.log on each worker; WORKDIR and the data dir must
# be reachable from every worker (a gs:// bucket; bind DATA_DIR the same way).
# logs copies each worker's log to DEST_DIR/worker_<i>.log. --dry_run prints
# the exact commands instead of running them.
#
# Example (a v4-32 slice: 4 workers):
#   tpu_scripts/pod.sh create genrec-pod us-central2-b v4-32
#   tpu_scripts/pod.sh install genrec-pod us-central2-b
#   tpu_scripts/pod.sh run genrec-pod us-central2-b gin/recommendation/tiger_beauty.gin \
#     gs://BUCKET/runs/tiger_beauty "DATA_DIR='gs://BUCKET/data'"
set -euo pipefail

# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"  # run, usage_lines, DRY_RUN (consumes --dry_run)

usage() {
  usage_lines 2 18
}

[ $# -ge 3 ] || usage
COMMAND=$1 TPU_NAME=$2 ZONE=$3
shift 3
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
TPU=(gcloud compute tpus tpu-vm)

case "$COMMAND" in
  create)
    [ $# -ge 1 ] || usage
    ACCELERATOR_TYPE=$1 RUNTIME_VERSION=${2:-tpu-ubuntu2204-base}
    run "${TPU[@]}" create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
    ;;
  install)
    run tar -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=.venv \
      -czf /tmp/genrec.tgz .
    run "${TPU[@]}" scp /tmp/genrec.tgz "$TPU_NAME":/tmp/genrec.tgz --zone "$ZONE" \
      --worker=all
    run "${TPU[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
      "mkdir -p ~/genrec && tar -C ~/genrec -xzf /tmp/genrec.tgz && cd ~/genrec && python3 -m pip install -q -e '.[train,tpu]'"
    ;;
  run)
    [ $# -ge 2 ] || usage
    GIN_FILE=$1 WORKDIR=$2
    shift 2
    ARGS="--multiprocess --gin_file=$(printf '%q' "$GIN_FILE") --workdir=$(printf '%q' "$WORKDIR")"
    for binding in "$@"; do
      ARGS+=" --gin_bindings=$(printf '%q' "$binding")"
    done
    run "${TPU[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
      "cd ~/genrec && python3 main.py $ARGS 2>&1 | tee ~/genrec_run.log"
    ;;
  logs)
    [ $# -ge 1 ] || usage
    DEST=$1
    run mkdir -p "$DEST"
    if [ "$DRY_RUN" = 1 ]; then
      WORKERS=1  # one line shows the pattern; a real run asks gcloud how many
    else
      WORKERS=$("${TPU[@]}" describe "$TPU_NAME" --zone "$ZONE" \
        --format='value(networkEndpoints.len())')
    fi
    for ((i = 0; i < WORKERS; i++)); do
      run "${TPU[@]}" scp "$TPU_NAME":genrec_run.log "$DEST/worker_$i.log" --zone "$ZONE" \
        --worker="$i"
    done
    ;;
  delete)
    run "${TPU[@]}" delete "$TPU_NAME" --zone "$ZONE" --quiet
    ;;
  *)
    usage
    ;;
esac
