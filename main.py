"""genrec entry point: `python main.py --gin_file=gin/runs/quickstart.gin --workdir=...`.

The same as the `genrec` command; see genrec/launch.py.
"""

from genrec import launch

if __name__ == '__main__':
  launch.run()
