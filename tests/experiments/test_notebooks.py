"""Executes every notebook in ``experiments/notebooks`` top to bottom (as CI and Colab would)."""

import os
import pathlib

import nbformat
import pytest
from conftest import data_root
from nbclient import NotebookClient

NOTEBOOKS = sorted(
  (pathlib.Path(__file__).resolve().parents[2] / "experiments/notebooks").glob("*.ipynb")
)
CELL_TIMEOUT_S = 120


def test_one_notebook_per_package():
  assert {p.stem for p in NOTEBOOKS} == {"jaxsteer", "paca_jax", "ntk", "recoder"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"{path.name}: outputs not stripped"
      )
  first = nb.cells[1].source
  assert 'if "google.colab" in sys.modules' in first and "REPO_URL" in first


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  if data_root().is_dir():
    monkeypatch.setenv("JAXSTEER_DATA", str(data_root()))
  # One fake device is enough for the tours (and starts faster than the suite's eight).
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  monkeypatch.setenv("XLA_FLAGS", flags)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(tmp_path)}},
  )
  client.execute()  # raises CellExecutionError with the failing cell's traceback
