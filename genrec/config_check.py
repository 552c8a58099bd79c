"""Type checks of configured values before any work starts.

Gin passes whatever a binding says (`num_train_steps = 'abc'` is a string);
without a check the run loads data and fits identifiers before failing deep
inside with a TypeError. `check_arguments` compares the values with the run
function's annotations and names the binding to fix; config dataclasses call
`check_fields` in `__post_init__`.
"""

import dataclasses
import inspect
import types
import typing


def _accepts(value, tp) -> bool:
  if tp is typing.Any or tp is inspect.Parameter.empty:
    return True
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return any(_accepts(value, a) for a in typing.get_args(tp))
  if tp is type(None):
    return value is None
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if origin in (tuple, list) or tp in (tuple, list):
    return isinstance(value, (tuple, list))
  if origin is dict or tp is dict:
    return isinstance(value, dict)
  if isinstance(tp, type) and origin is None:
    return isinstance(value, tp)
  return True  # Callable and other typing constructs are not checked


def _describe(tp) -> str:
  return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')


def check_arguments(fn, arguments: dict) -> None:
  """Raises ValueError naming `fn.param` when a value does not fit its annotation."""
  hints = typing.get_type_hints(fn)
  name = getattr(fn, '__qualname__', fn.__name__)
  for param, value in arguments.items():
    tp = hints.get(param)
    if tp is not None and not _accepts(value, tp):
      raise ValueError(f'{name}.{param} = {value!r} ({type(value).__name__}) is not a '
                       f'{_describe(tp)}; fix that gin binding or argument.'
                       + _choices(tp))


def _choices(tp) -> str:
  """' Choices: @ids.AtomicIds(), ...' for a genrec base class: its concrete
  subclasses as gin references; '' for other types."""
  if not isinstance(tp, type) or not tp.__module__.startswith('genrec'):
    return ''
  found, todo = [], list(tp.__subclasses__())
  while todo:
    cls = todo.pop()
    todo.extend(cls.__subclasses__())
    if not cls.__name__.startswith('_') and not getattr(cls, '__abstractmethods__', None):
      package = cls.__module__.split('.')
      found.append(f'@{package[1] if len(package) > 1 else package[0]}.{cls.__name__}()')
  return f' Choices: {", ".join(sorted(set(found)))}.' if found else ''


def check_fields(obj) -> None:
  """`check_arguments` for the fields of a dataclass instance."""
  check_arguments(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
