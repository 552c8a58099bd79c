"""Tables of results: finished run directories in, markdown and CSV out (used by
the run modes and the benchmark scripts)."""

import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


def finished_runs(root: str) -> Iterator[tuple[str, dict]]:
  """(name, results.json) of every run directory under `root` that finished."""
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, 'results.json')
    if os.path.exists(path):
      with open(path) as f:
        yield name, json.load(f)


def host_summary() -> str:
  """'<cores> cores, <CPU model>' of this host, for the results' machine column."""
  try:
    with open('/proc/cpuinfo') as f:
      model = next(line.split(':', 1)[1].strip() for line in f
                   if line.startswith('model name'))
  except (OSError, StopIteration):
    model = platform.machine()
  return f'{os.cpu_count()} cores, {model}'


def _shell_quote(arg: str) -> str:
  """`arg` as a shell reads it back, in double quotes where that suffices
  (gin bindings hold single quotes)."""
  if shlex.quote(arg) == arg or any(ch in arg for ch in '"$`\\!'):
    return shlex.quote(arg)
  return f'"{arg}"'


_COMMIT = []


def source_commit() -> str:
  """The git commit of the genrec source this process runs ('<sha>', with
  '-dirty' when tracked files differ from it; '' outside a git checkout),
  read once per process (`launch.main` reads it at start, while the checkout
  holds the code the process imports) so that a result names the code that
  produced it even if the checkout changes meanwhile."""
  if not _COMMIT:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
      run = lambda *a: subprocess.run(['git', '-C', root, *a], capture_output=True, text=True,
                                      timeout=10, check=True).stdout.strip()
      sha = run('rev-parse', '--short=12', 'HEAD')
      dirty = run('status', '--porcelain', '--untracked-files=no')
      _COMMIT.append(sha + ('-dirty' if dirty else ''))
    except (OSError, subprocess.SubprocessError):
      _COMMIT.append('')
  return _COMMIT[0]


def command_line(argv: list[str] | None = None) -> str:
  """This process's command as a user would type it again: `python main.py ...`
  or `python -m genrec.benchmarks.<name> ...` for a module run by -m."""
  argv = sys.argv if argv is None else argv
  path = os.path.normpath(argv[0]) if argv else ''
  parts = path.split(os.sep)
  if os.path.basename(path) == 'main.py':
    program = 'python main.py'
  elif 'genrec' in parts and path.endswith('.py'):
    module = parts[len(parts) - 1 - parts[::-1].index('genrec'):]
    program = 'python -m ' + '.'.join(module)[:-len('.py')]
  else:
    program = shlex.quote(argv[0]) if argv else 'python'
  return ' '.join([program, *map(_shell_quote, argv[1:])])


def provenance() -> dict:
  """The machine (this host's CPU, or the accelerators), date, commit and
  command of a result measured now."""
  import jax  # only where a result is measured
  from genrec import partitioning
  return {'machine': host_summary() if jax.default_backend() == 'cpu'
          else partitioning.device_summary(),
          'date': time.strftime('%Y-%m-%d'), 'commit': source_commit(),
          'command': command_line()}


def markdown(rows: list[dict], cols: list[str] | None = None,
             cell: Callable[[str, object], str] = lambda col, value: str(value)) -> str:
  """A markdown table of `rows` (columns: `cols`, default every key of the rows
  in order of appearance); `cell(column, value)` formats each value."""
  cols = list(dict.fromkeys(k for r in rows for k in r)) if cols is None else cols
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(cell(c, r.get(c, '')) for c in cols) + ' |' for r in rows]
  return '\n'.join(lines)


def _number(value: str):
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def read_csv(path: str, key: str, flag: str = '--table_keep') -> list[dict]:
  """The rows of a table that `write` wrote (<stem>.csv): empty cells dropped,
  numbers read back as numbers. Every row must have `key` (the table's first
  column), else the file is refused as another kind of table; `flag` names the
  option that gave the path in the errors."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{flag}: no table at {path!r} (a <stem>.csv written by the '
                            'benchmark).')
  with open(path, newline='') as f:
    rows = [{k: _number(v) for k, v in r.items() if v not in ('', None)}
            for r in csv.DictReader(f)]
  bad = [n for n, r in enumerate(rows, 2) if key not in r]
  if bad:
    raise ValueError(f'{flag}: {path!r} is not this kind of table: line(s) {bad[:5]} have '
                     f'no {key!r}.')
  return rows


def write(markdown: str, rows: list[dict], directory: str, stem: str) -> None:
  """Writes <directory>/<stem>.md and, if there are rows, <stem>.csv. A CSV
  written again keeps its earlier columns' order (new columns after them), so
  its diff shows only the values that changed."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f'{stem}.md'), 'w') as f:
    f.write(markdown + '\n')
  if rows:
    path = os.path.join(directory, f'{stem}.csv')
    fields = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ in keys
    if os.path.exists(path):
      with open(path, newline='') as f:
        before = next(csv.reader(f), [])
      fields = [k for k in before if k in fields] + [k for k in fields if k not in before]
    with open(path, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      w.writerows(rows)
