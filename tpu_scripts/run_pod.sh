#!/usr/bin/env bash
# Runs a genrec gin config on every host of a Cloud TPU VM pod slice.
#
#   tpu_scripts/run_pod.sh TPU_NAME ZONE gin/experiments/beauty_atomic.gin gs://BUCKET/runs/NAME [gin bindings...]
#
# Every host installs the repo (copied from this checkout) with the 'tpu'
# extra, then runs main.py with --multiprocess, which calls
# jax.distributed.initialize(). The workdir must be reachable from every host
# (a GCS bucket); the data dir too (bind DATA_DIR to a gs:// or mounted path).
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
TPU_NAME=$1 ZONE=$2 GIN_FILE=$3 WORKDIR=$4
shift 4
BINDINGS=""
for b in "$@"; do BINDINGS+=" --gin_bindings=$(printf '%q' "$b")"; done

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=.venv -czf /tmp/genrec.tgz .
gcloud compute tpus tpu-vm scp /tmp/genrec.tgz "$TPU_NAME":/tmp/genrec.tgz --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/genrec && tar -C ~/genrec -xzf /tmp/genrec.tgz && cd ~/genrec
  python3 -m pip install -q -e '.[tpu]'
  python3 main.py --multiprocess --gin_file=$GIN_FILE --workdir=$WORKDIR $BINDINGS
"
