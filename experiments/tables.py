"""Result tables of the study READMEs, generated from the JSON files they cite.

A README marks each generated table with a comment that names the renderer and the JSON file
(relative to the repository root) and optional arguments::

  <!-- table variants experiments/recoder/results/ptb_small_test.json -->
  | variant | test ppl | ... |
  <!-- /table -->

``python -m experiments.tables`` rewrites every marked table from its JSON;
``python -m experiments.tables --check`` exits 1 and names each table that disagrees with its
JSON (``tests/experiments/test_tables.py`` runs the check, so a hand-edited number fails CI).
Numbers are formatted by ``experiments.report.fmt`` (4 significant digits) and intervals as
``value [lo, hi]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

from experiments.report import _claims_table, _value, atomic_write, fmt

REPO = pathlib.Path(__file__).resolve().parent.parent
READMES = (
  "experiments/grains/README.md",
  "experiments/vlm/results/README.md",
  "experiments/recoder/results/README.md",
  "experiments/sgntk/results/README.md",
  "experiments/paca/README.md",
)
BLOCK = re.compile(r"<!-- table (\w+) (\S+)((?: [^ >]+)*) -->\n(.*?)<!-- /table -->", re.S)


def _row(cells) -> str:
  return "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in cells) + " |"


def _table(header, rows) -> str:
  return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def claims(data, study):
  """The verdict per claim of ``study`` in a ``results.json``."""
  st = data["studies"][study]
  if st["status"] != "ok":
    return f"Study `{study}` {st['status']} in this run: {st.get('reason') or st.get('error')}."
  return "\n".join(_claims_table([(study, c) for c in st.get("claims", [])], False, "95% CI"))


def headline(data, study, prefix=""):
  """The headline rows (value [95% CI], n) of ``study`` in a ``results.json``."""
  st = data["studies"][study]
  if st["status"] != "ok":
    return f"Study `{study}` {st['status']} in this run: {st.get('reason') or st.get('error')}."
  rows = [r for r in data["studies"][study].get("headline", []) if r["metric"].startswith(prefix)]
  return _table(
    ["metric", "ours [95% CI]", "n"], [[r["metric"], _value(r), r.get("n")] for r in rows]
  )


def variants(data):
  """Perplexity and cost per recoding variant of a ``recoder.evaluate`` JSON."""
  v = data.get("variants", data)
  return _table(
    ["variant", "test ppl", "cost (time per token / baseline)"],
    [
      [k, r["ppl"], r.get("cost_ratio")] for k, r in v.items() if isinstance(r, dict) and "ppl" in r
    ],
  )


def history(data):
  """Validation perplexity per epoch of a ``recoder.train`` summary."""
  return _table(
    ["epoch", "lr", "valid ppl"],
    [[h["epoch"], h["lr"], f"{h['valid_ppl']:.2f}"] for h in data["history"]],
  )


def sgntk_mse(data, fig):
  """MSE(empirical, analytic kernel) per m and width, and the log-log slope, of one figure."""
  widths = data["config"]["kernel_widths"]
  rows = [[m.removeprefix("m="), *r["t0"], r["slope_t0"]] for m, r in data[fig]["mse"].items()]
  return _table(["m", *(f"n = {w}" for w in widths), "log-log slope"], rows)


def sgntk_gp(data):
  """The SGL ensembles against the SG-NTK GP and the NNGP, per width."""
  rows = [
    [w, r["final_train_loss"], r["rmse_ensemble_vs_sgntk_mean"], r["rmse_ensemble_vs_nngp_mean"],
     r["mean_ensemble_sd"], r["median_abs_z"], r["frac_ensemble_within_2sd"]]
    for w, r in data["fig3_sgl_vs_gp"]["widths"].items()
  ]  # fmt: skip
  return _table(
    ["n", "final train loss", "RMSE(ens. mean, SG-NTK GP mean)", "RMSE(ens. mean, NNGP mean)",
     "mean ens. sd", "median abs z", "share within GP mean +- 2 sd"],
    rows,
  )  # fmt: skip


def sgntk_digits(data):
  """Test accuracy of each predictor on scikit-learn digits."""
  d = data["digits"]
  return _table(
    ["predictor", "test accuracy"],
    [
      ["single SGL-trained sign networks", ", ".join(fmt(a) for a in d["acc_sgl_networks"])],
      ["mean of the networks", d["acc_sgl_ensemble_mean"]],
      ["SG-NTK GP mean at the same time", d["acc_sgntk_gp_mean_t"]],
      ["SG-NTK GP mean at t = inf", d["acc_sgntk_gp_mean_inf"]],
      ["NNGP (Sigma_sign) regression", d["acc_nngp_regression"]],
    ],
  )


def vlm_sweep(data):
  """Hallucination rate per method and alpha (target: triggered items; clean: no trigger)."""
  return _table(
    ["method", "alpha", "target", "clean"],
    [[m, r["alpha"], r["target"], r["clean"]] for m, rows in data["sweeps"].items() for r in rows],
  )


def vlm_attribution(data):
  """The attribution measures of the single-seed VLM run."""
  return _table(
    ["measure", "value"],
    [
      ["median completeness error / (f(x) - f(baseline))", data["ig_relative_delta_median"]],
      [
        "trigger token is the most negative text token",
        data["trigger_is_most_negative_text_token"],
      ],
      ["share of the 5 most positive image tokens on the box", data["top5_image_tokens_on_box"]],
      ["the box's share of the patches (chance)", data["box_patch_share"]],
    ],
  )


def ntk_bench(data):
  """Speed of every SG layer against neural-tangents' own baseline (``benchmarks/ntk_bench.py``)."""
  rows = []
  for name, v in data["kernel_fn"]["layers"].items():
    (key,) = [x for x in v if x.startswith("ratio_vs_")]
    base = "stax.Erf" if key.endswith("stax_erf (min)") else "ElementwiseNumerical"
    rows.append([f"`{name}`", v["first_call_s (compile + run)"], v["step_min_s"], v[key], base])
  return _table(["layer", "first call (s)", "step min (s)", "ratio (min)", "vs"], rows)


def ntk_precision(data):
  """float32 vs float64: largest relative error over entries with |K| >= 1e-2 max, per layer."""
  rows = [
    [f"`{name}`", *(v[f"{q} rel (|K| >= 1e-2 max)"] for q in ("nngp", "ntk", "I(X,X)")),
     v["I(X,X) diagonal rel"]]
    for name, v in data["float32_vs_float64_rel_err"].items()
  ]  # fmt: skip
  return _table(["layer", "NNGP", "NTK", "I(X, X)", "I(X, X) diagonal"], rows)


def ntk_big_kernel(data):
  """The large SG-NTK + NNGP built block by block with ``nt.batch``."""
  b = data["big_kernel"]
  return _table(
    ["n x n", "dtype", "block", "s incl. compile", "output GiB", "peak RSS GiB", "all finite"],
    [[f"{b['n']} x {b['n']}", b["dtype"], b["block"], b["seconds_incl_compile"], b["output_gib"],
      b["peak_rss_gib"], str(b["finite"])]],
  )  # fmt: skip


RENDERERS = {
  f.__name__: f
  for f in (claims, headline, variants, history, sgntk_mse, sgntk_gp, sgntk_digits, vlm_sweep,
            vlm_attribution, ntk_bench, ntk_precision, ntk_big_kernel)
}  # fmt: skip


def render(name: str, json_path: str, args: list[str], root: pathlib.Path = REPO) -> str:
  if name not in RENDERERS:
    raise ValueError(f"unknown table renderer {name!r}; known: {', '.join(RENDERERS)}")
  data = json.loads((root / json_path).read_text())
  return RENDERERS[name](data, *args).rstrip("\n") + "\n"


def refresh(readme: pathlib.Path, *, check: bool, root: pathlib.Path = REPO) -> list[str]:
  """Rewrites (or, with ``check``, compares) every marked table of ``readme``; returns the
  marker of each table that differed."""
  text = readme.read_text()
  stale = []

  def sub(m):
    name, path, args, body = m.group(1), m.group(2), m.group(3).split(), m.group(4)
    new = render(name, path, args, root)
    if new != body:
      stale.append(f"{readme}: table {name} {path} {' '.join(args)}".rstrip())
    return f"<!-- table {name} {path}{m.group(3)} -->\n{new}<!-- /table -->"

  out = BLOCK.sub(sub, text)
  if not check and out != text:
    atomic_write(readme, out)
  return stale


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m experiments.tables",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("--check", action="store_true", help="exit 1 if a table disagrees with its JSON")
  a = ap.parse_args(argv)
  stale = []
  for rel in READMES:
    path = REPO / rel
    if path.is_file():
      stale += refresh(path, check=a.check)
  for s in stale:
    print(("stale: " if a.check else "rewrote: ") + s, file=sys.stderr)
  return 1 if a.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
