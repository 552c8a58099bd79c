r"""Names the commit of results rows written before tables carried one.

Every benchmark now writes the commit of the code that measured a row
(`tables.source_commit()`). Rows recorded earlier get the commit that wrote
them into the CSV (`git blame` of their line): the closest record there is of
the code that produced them. Rows that already name a commit are left as
they are. Run from the repository:

  python -m genrec.benchmarks.recorded_commit docs/results/fm_index.csv ...
"""

import csv
import io
import subprocess
import sys


def blame_commits(path: str) -> list[str]:
  """The commit (12 hex digits) that last wrote each line of `path` in git."""
  out = subprocess.run(['git', 'blame', '-s', '-l', '--', path], capture_output=True,
                       text=True, check=True).stdout
  return [line.split()[0].lstrip('^')[:12] for line in out.splitlines()]


def add_commits(path: str) -> int:
  """Adds or fills the 'commit' column of a CSV file from `blame_commits`
  (before 'command' when the table has one). Returns the rows filled in."""
  with open(path, newline='') as f:
    text = f.read()
  records = list(csv.reader(io.StringIO(text)))
  header, rows = records[0], records[1:]
  if len(text.splitlines()) != len(records):
    raise ValueError(f'{path} has quoted line breaks: its rows cannot be matched to git '
                     'lines; add the commit column by hand from `git log`.')
  commits = blame_commits(path)[1:]
  if 'commit' not in header:
    at = header.index('command') if 'command' in header else len(header)
    header.insert(at, 'commit')
    rows = [r[:at] + [''] + r[at:] for r in rows]
  col, filled = header.index('commit'), 0
  for row, commit in zip(rows, commits):
    if not row[col]:
      row[col], filled = commit, filled + 1
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([header, *rows])  # as tables.write: csv's own line ends
  return filled


def main(argv: list[str]) -> None:
  if not argv:
    raise SystemExit(__doc__)
  for path in argv:
    print(f'{path}: {add_commits(path)} rows given their recorded commit')


if __name__ == '__main__':
  main(sys.argv[1:])
