"""The architecture as the tree shows it: imports point down into the core,
applications never import each other, and the packaging ships every package
and the gin files."""

import ast
import configparser
import glob
import os

import setuptools

from conftest import REPO_ROOT

APPLICATIONS = ('recommendation', 'retrieval', 'ranking')
CORE_PACKAGES = ('ids', 'data')


def _layer(module: str) -> str:
  """'core', an application name, or 'benchmarks' for a genrec module name."""
  parts = module.split('.')
  if len(parts) > 1 and parts[1] in APPLICATIONS + ('benchmarks',):
    return parts[1]
  return 'core'


def _genrec_imports(path: str) -> set[str]:
  tree = ast.parse(open(path).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith('genrec')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('genrec'):
      # `from genrec import x` imports the module genrec.x.
      out |= {f'{node.module}.{a.name}' for a in node.names} if node.module == 'genrec' else {
          node.module}
  return out


def test_imports_point_down_into_the_core():
  bad = []
  for path in glob.glob(os.path.join(REPO_ROOT, 'genrec', '**', '*.py'), recursive=True):
    rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, '.')
    me = _layer(rel)
    if me == 'benchmarks':
      continue  # scripts on top may use everything
    for imported in _genrec_imports(path):
      theirs = _layer(imported)
      if theirs != 'core' and theirs != me:
        bad.append(f'{rel} ({me}) imports {imported} ({theirs})')
  assert not bad, 'imports against the layering:\n' + '\n'.join(bad)


def test_declared_packages_are_every_package_plus_the_gin_files():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  declared = set(cfg['options']['packages'].split())
  found = set(setuptools.find_packages(REPO_ROOT, include=['genrec', 'genrec.*']))
  assert declared == found | {'genrec.gin'}
  assert cfg['options']['package_dir'].split() == ['genrec.gin', '=', 'gin']
  assert cfg['options.package_data']['genrec.gin'].strip() == '**/*.gin'
  assert 'genrec = genrec.launch:run' in cfg['options.entry_points']['console_scripts']
  assert glob.glob(os.path.join(REPO_ROOT, 'gin', 'runs', '*.gin'))
  for pkg in found:  # every package is a real one (find_packages needs __init__.py)
    assert os.path.exists(os.path.join(REPO_ROOT, *pkg.split('.'), '__init__.py'))
