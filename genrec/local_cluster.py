r"""A multi-process genrec job on this machine: N processes, M CPU devices
each, over JAX's distributed runtime with CPU collectives (gloo), as a
multi-host job runs on a pod, one process per host. For tests, and to try a
sharding or a data split before a pod.

  python -m genrec.local_cluster --num_processes=2 --devices_per_process=2 -- \
      --gin_file=gin/runs/quickstart.gin --workdir=runs/two_processes

Every process runs main.py with the arguments after `--`, plus
--coordinator_address=127.0.0.1:<a free port> --num_processes=N
--process_id=i, with JAX_PLATFORMS=cpu and
--xla_force_host_platform_device_count=M added to the caller's other
XLA_FLAGS. Process 0's output is
shown as it comes; each process's output is also kept in
--logs/process_<i>.log (default <workdir>/local_cluster/). When a process
fails, the others are given --grace_s to stop on their own (the distributed
runtime tells them), then killed; the launcher exits with the failed
process's status and names it.
"""

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from absl import app, flags

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _copy(stream, path: str, echo: bool) -> None:
  with open(path, 'w') as log:
    for line in stream:
      log.write(line)
      log.flush()
      if echo:
        sys.stderr.write(line)


@dataclasses.dataclass(frozen=True)
class Job:
  codes: list[int]  # every process's exit status (negative: killed by that signal)
  failed: int | None  # the process that failed first (the others may have failed after it)
  ended: list[float]  # when each process was seen to exit (time.time())

  @property
  def ok(self) -> bool:
    return self.failed is None


def run(args: Sequence[str], num_processes: int, devices_per_process: int, log_dir: str,
        grace_s: float = 30.0, timeout_s: float | None = None, echo: bool = True,
        program: Sequence[str] = (sys.executable, MAIN),
        started: Callable[[list[subprocess.Popen]], None] | None = None) -> Job:
  """Runs `program args` as `num_processes` processes of one job.

  `started(processes)`, if given, is called once every process has started
  (e.g. a test that kills one).

  Returns:
    The exit statuses, which process failed first, if one did (it stops the
    others, see the module docstring), and when each exited.

  Raises:
    TimeoutError: naming the processes still running after `timeout_s`
      (they are killed).
  """
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f'num_processes and devices_per_process must be >= 1, not '
                     f'{num_processes} and {devices_per_process}.')
  os.makedirs(log_dir, exist_ok=True)
  address = f'127.0.0.1:{free_port()}'
  xla_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
               if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ' '.join(
      [*xla_flags, f'--xla_force_host_platform_device_count={devices_per_process}'])}
  procs, copiers = [], []
  for i in range(num_processes):
    cmd = [*program, *args, f'--coordinator_address={address}',
           f'--num_processes={num_processes}', f'--process_id={i}']
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    t = threading.Thread(target=_copy, daemon=True,
                         args=(p.stdout, os.path.join(log_dir, f'process_{i}.log'),
                               echo and i == 0))
    t.start()
    procs.append(p)
    copiers.append(t)
  if started is not None:
    started(procs)
  start, failed, failed_at = time.time(), None, None
  ended = [None] * num_processes
  try:
    while any(p.poll() is None for p in procs):
      now = time.time()
      for i, p in enumerate(procs):
        if ended[i] is None and p.poll() is not None:
          ended[i] = now
      if failed is None:
        failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
        failed_at = now
      if failed is not None and now - failed_at > grace_s:
        break
      if timeout_s is not None and now - start > timeout_s:
        running = [i for i, p in enumerate(procs) if p.poll() is None]
        raise TimeoutError(f'Processes {running} still running after {timeout_s:.0f} s; '
                           f'killed. Their logs: {log_dir}.')
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for t in copiers:
      t.join(5)
  codes = [p.returncode for p in procs]
  if failed is None:  # failures seen only at the end (all exited within one poll)
    failed = next((i for i, c in enumerate(codes) if c), None)
  now = time.time()
  return Job(codes, failed, [now if t is None else t for t in ended])


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The launcher's flags, defined when it runs (not on import: main.py's own
  flags share names)."""
  flags.DEFINE_integer('num_processes', 2, 'Processes (one per simulated host).')
  flags.DEFINE_integer('devices_per_process', 2, 'CPU devices of each process.')
  flags.DEFINE_string('logs', None, 'Where process_<i>.log go (default '
                      '<workdir>/local_cluster, or ./local_cluster without --workdir).')
  flags.DEFINE_float('grace_s', 30.0, 'After one process fails, how long the others get '
                     'to stop on their own before they are killed.')


def main(argv):
  args = argv[1:]
  if not args:
    raise app.UsageError('Give main.py\'s arguments after --, e.g. -- '
                         '--gin_file=gin/runs/quickstart.gin --workdir=runs/two_processes')
  workdir = next((a.split('=', 1)[1] for a in args if a.startswith('--workdir=')), '.')
  log_dir = FLAGS.logs or os.path.join(workdir, 'local_cluster')
  job = run(args, FLAGS.num_processes, FLAGS.devices_per_process, log_dir, FLAGS.grace_s)
  if not job.ok:
    i = job.failed
    sys.exit(f'Process {i} of {len(job.codes)} failed first (exit status {job.codes[i]}); '
             f'statuses {job.codes}. Its log: {os.path.join(log_dir, f"process_{i}.log")}')
  print(f'{len(job.codes)} processes x {FLAGS.devices_per_process} devices finished; logs '
        f'in {log_dir}.', file=sys.stderr)


if __name__ == '__main__':
  define_flags()
  app.run(main)
