"""Every ``python -m <our module> ...`` command in README.md names flags that exist.

Commands are taken from the whole file (code blocks and inline code; backslash continuations
joined; a ``&&`` chain split). A synopsis (``[--smoke | --quick]``) only has its flags looked up in
the module's ``--help``; a concrete command is parsed by the module's own argument parser, so
missing required options, unknown flags and bad values fail as they would for a user.
"""

import contextlib
import importlib
import io
import pathlib
import re
import shlex

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
OURS = ("jaxsteer", "paca_jax", "recoder", "experiments")
# Modules whose parser can be built without running anything: module -> "module:function".
PARSERS = {
  "jaxsteer": "jaxsteer._src.cli:build_parser",
  "paca_jax.train": "paca_jax.train:build_parser",
  "recoder.train": "recoder._src.train:build_parser",
  "recoder.evaluate": "recoder._src.evaluate:build_parser",
}


def readme_commands() -> list[tuple[str, str]]:
  text = README.read_text().replace("\\\n", " ")
  found = []
  for m in re.finditer(r"python3? -m ([\w.]+)([^`\n]*)", text):
    module, rest = m.group(1), m.group(2).split("&&")[0].strip()
    if module.split(".")[0] in OURS:
      found.append((module, rest))
  return found


def _help(module: str, sub: list[str]) -> str:
  """The ``--help`` text of ``python -m module [sub...]`` (in-process)."""
  if module in PARSERS:
    mod, fn = PARSERS[module].split(":")
    run = lambda argv: getattr(importlib.import_module(mod), fn)().parse_args(argv)  # noqa: E731
  else:
    run = importlib.import_module(module).main
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
    run([*sub, "--help"])
  assert e.value.code == 0, (module, sub)
  return buf.getvalue()


def test_readme_has_commands_of_every_cli():
  modules = {m for m, _ in readme_commands()}
  assert {"jaxsteer", "paca_jax.train", "recoder.train", "recoder.evaluate"} <= modules
  assert "experiments.reproduce" in modules


@pytest.mark.parametrize("module, rest", readme_commands(), ids=lambda x: x[:40])
def test_readme_command_parses(module, rest, capsys):
  tokens = shlex.split(rest)
  if "[" in rest:  # a synopsis: every flag must exist
    help_text = _help(module, [])
    for flag in re.findall(r"--[\w-]+", rest):
      assert re.search(rf"{flag}\b", help_text), f"README: {module} has no flag {flag}"
    return
  if module not in PARSERS:  # no side-effect-free parser: look the flags up in --help
    sub = [t for t in tokens[:1] if not t.startswith("-")] if module == "jaxsteer" else []
    help_text = _help(module, sub)
    for flag in (t.split("=")[0] for t in tokens if t.startswith("--")):
      assert re.search(rf"{flag}\b", help_text), f"README: {module} has no flag {flag}"
    return
  mod, fn = PARSERS[module].split(":")
  parser = getattr(importlib.import_module(mod), fn)()
  try:
    parser.parse_args(tokens)
  except SystemExit:
    pytest.fail(
      f"README command `python -m {module} {rest}` does not parse: {capsys.readouterr().err}"
    )
