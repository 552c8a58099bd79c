"""The cluster launchers in tpu_scripts/: their --dry_run prints the exact
commands, and they pass shellcheck."""

import glob
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

SCRIPTS = sorted(glob.glob(os.path.join(REPO_ROOT, 'tpu_scripts', '*.sh')))


def _dry_run(script: str, *args: str) -> list[str]:
  out = subprocess.run(['bash', os.path.join(REPO_ROOT, 'tpu_scripts', script), '--dry_run',
                        *args], capture_output=True, text=True, check=True, timeout=60,
                       env={**os.environ, 'PATH': '/usr/bin:/bin'})  # no gcloud/sbatch needed
  return out.stdout.splitlines()


def test_pod_dry_runs_print_every_command():
  pod = ('genrec-pod', 'us-central2-b')
  assert _dry_run('pod.sh', 'create', *pod, 'v4-32') == [
      'gcloud compute tpus tpu-vm create genrec-pod --zone us-central2-b --accelerator-type '
      'v4-32 --version tpu-ubuntu2204-base ']
  install = _dry_run('pod.sh', 'install', *pod)
  assert install[0].startswith('tar -C ') and 'scp /tmp/genrec.tgz' in install[1]
  assert shlex.split(install[2])[-1].endswith("pip install -q -e '.[train,tpu]'")
  line, = _dry_run('pod.sh', 'run', *pod, 'gin/recommendation/tiger_beauty.gin',
                   'gs://b/runs/x', "DATA_DIR='gs://b/data'")
  command = shlex.split(line)
  assert command[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'genrec-pod']
  assert '--worker=all' in command
  remote = shlex.split(command[-1])  # what every worker's shell runs
  assert remote[:5] == ['cd', '~/genrec', '&&', 'python3', 'main.py']
  assert '--multiprocess' in remote and "--gin_bindings=DATA_DIR='gs://b/data'" in remote
  assert '--gin_file=gin/recommendation/tiger_beauty.gin' in remote
  assert _dry_run('pod.sh', 'logs', *pod, 'logs')[1].startswith(
      'gcloud compute tpus tpu-vm scp genrec-pod:genrec_run.log logs/worker_0.log')
  assert _dry_run('pod.sh', 'delete', *pod) == [
      'gcloud compute tpus tpu-vm delete genrec-pod --zone us-central2-b --quiet ']


def test_gpu_cluster_dry_runs_print_the_job():
  script = _dry_run('gpu_cluster.sh', 'slurm', '2', '8', 'gin/recommendation/tiger_beauty.gin',
                    '/shared/runs/x', "DATA_DIR='/shared/data'")
  assert '#SBATCH --nodes=2' in script and '#SBATCH --gpus-per-node=8' in script
  srun = shlex.split(next(line for line in script if line.startswith('srun')))
  assert srun[:4] == ['srun', 'python', 'main.py', '--multiprocess']
  assert "--gin_bindings=DATA_DIR='/shared/data'" in srun
  assert script[-1].strip() == 'sbatch /shared/runs/x/slurm_job.sh'
  line, = _dry_run('gpu_cluster.sh', 'node', '10.0.0.1:1234', '2', '1',
                   'gin/recommendation/tiger_beauty.gin', '/shared/runs/x')
  command = shlex.split(line)
  assert command[:4] == ['env', 'JAX_COORDINATOR_ADDRESS=10.0.0.1:1234',
                         'JAX_NUM_PROCESSES=2', 'JAX_PROCESS_ID=1']
  assert command[5].endswith('main.py') and '--workdir=/shared/runs/x' in command


def test_gpu_check_dry_run_prints_each_figure_s_command():
  """The one GPU check: both Beauty recipes on time budgets, their table,
  the epoch cost (MFU) and the 1M-item decoding row, all under OUT; --smoke
  swaps in the synthetic catalog and tiny budgets (run by hand on a CPU:
  `bash tpu_scripts/gpu_check.sh --smoke /tmp/gpu_smoke`, ~3 minutes)."""
  lines = [shlex.split(line) for line in _dry_run('gpu_check.sh', '/out')]
  assert [c[:3] for c in lines] == [
      ['mkdir', '-p', '/out/runs'], ['python', 'main.py', '--gin_file=gin/recommendation/tiger_beauty.gin'],
      ['python', 'main.py', '--gin_file=gin/recommendation/beauty_item_sid.gin'],
      ['python', '-m', 'genrec.benchmarks.tiger_table'], ['python', '-m', 'genrec.benchmarks.epoch_cost'],
      ['python', '-m', 'genrec.benchmarks.decoding']]
  assert '--gin_bindings=train.train.max_train_seconds=240' in lines[1]
  assert '--workdir=/out/runs/item_sid' in lines[2] and '--catalog_sizes=1000000' in lines[5]
  assert "--gin_bindings=DATA_DIR='../shared/data'" in lines[2]
  smoke = [shlex.split(line) for line in _dry_run('gpu_check.sh', '--smoke', '/out')]
  assert '--gin_file=gin/budgets/smoke.gin' in smoke[1] and '--catalog_sizes=2000' in smoke[5]
  assert '--dataset=synthetic' in smoke[4]


def test_launchers_say_how_to_call_them():
  for script in ('pod.sh', 'gpu_cluster.sh', 'gpu_check.sh'):
    out = subprocess.run(['bash', os.path.join(REPO_ROOT, 'tpu_scripts', script)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and '--dry_run' in out.stderr


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck is not installed (Debian: apt-get install shellcheck; '
                    '.ci/run installs it where it can)')
def test_launchers_pass_shellcheck():
  assert SCRIPTS
  out = subprocess.run(['shellcheck', '-x', *SCRIPTS], capture_output=True, text=True,
                       timeout=120, cwd=REPO_ROOT)  # -x: follow common.sh
  assert out.returncode == 0, out.stdout
