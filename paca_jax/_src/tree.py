"""Small helpers for nested-dict parameter trees addressed by ``a/b/c`` module paths."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["get_path", "set_path", "delete_path", "nested_from_paths", "iter_paths", "unwrap"]


def unwrap(params):
  """``params["params"]`` when given a Flax variables dict with only a params collection."""
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def get_path(tree, path: str):
  node = tree
  for k in path.split("/"):
    node = node[k]
  return node


def _copy(node):
  return dict(node) if isinstance(node, Mapping) else node


def set_path(tree, path: str, value):
  """A shallow-copied tree with ``tree[a][b][c] = value`` (the input is not modified)."""
  keys = path.split("/")
  root = _copy(tree)
  node = root
  for k in keys[:-1]:
    node[k] = _copy(node[k]) if k in node else {}
    node = node[k]
  node[keys[-1]] = value
  return root


def delete_path(tree, path: str):
  keys = path.split("/")
  root = _copy(tree)
  node = root
  for k in keys[:-1]:
    node[k] = _copy(node[k])
    node = node[k]
  del node[keys[-1]]
  return root


def nested_from_paths(items: Mapping[str, object]) -> dict:
  out: dict = {}
  for path, value in items.items():
    out = set_path(out, path, value)
  return out


def iter_paths(tree, prefix=()):
  """Yields ``("a/b/c", leaf)`` for every leaf of a nested dict."""
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from iter_paths(v, (*prefix, str(k)))
  else:
    yield "/".join(prefix), tree
