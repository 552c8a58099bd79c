"""Tables of results: finished run directories in, markdown and CSV out (used by
the run modes and the benchmark scripts)."""

import csv
import json
import os
import platform
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


def markdown(rows: list[dict], cols: list[str] | None = None,
             cell: Callable[[str, object], str] = lambda col, value: str(value)) -> str:
  """A markdown table of `rows` (columns: `cols`, default every key of the rows
  in order of appearance); `cell(column, value)` formats each value."""
  cols = list(dict.fromkeys(k for r in rows for k in r)) if cols is None else cols
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(cell(c, r.get(c, '')) for c in cols) + ' |' for r in rows]
  return '\n'.join(lines)


def write(markdown: str, rows: list[dict], directory: str, stem: str) -> None:
  """Writes <directory>/<stem>.md and, if there are rows, <stem>.csv."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f'{stem}.md'), 'w') as f:
    f.write(markdown + '\n')
  if rows:
    with open(os.path.join(directory, f'{stem}.csv'), 'w', newline='') as f:
      fields = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ in keys
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      w.writerows(rows)
