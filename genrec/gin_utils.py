"""Gin helpers shared by the entry point and the benchmark scripts (no flags
here: those live in the scripts that define them)."""

import os
from collections.abc import Sequence

import gin


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  """'.', where the gin/ folder of this genrec is, then `extra`.

  An installed genrec ships the files as genrec/gin/ (package data); a
  checkout (or an editable install) has them at the repository root.
  """
  package = os.path.dirname(os.path.abspath(__file__))
  paths = ['.'] + [root for root in (package, os.path.dirname(package))
                   if os.path.isdir(os.path.join(root, 'gin', 'runs'))]
  return list(dict.fromkeys(paths + list(extra)))


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          extra_search_paths: Sequence[str] = ()) -> None:
  """Adds the search paths, then parses the files and bindings in order."""
  for path in search_paths(extra_search_paths):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
