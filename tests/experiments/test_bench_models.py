"""``experiments.bench_models``' decode ceiling: the matmuls-only program multiplies every weight a
decode step reads, in full, and nothing else."""

import numpy as np
import pytest

from experiments import bench_models

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")


@pytest.mark.parametrize("arch", ["llama", "llama3.2", "phi3", "gpt2"])
def test_decode_matmuls_multiply_every_weight_of_a_step(arch, tmp_path):
  """Its bytes are the weights the decode bound counts and transformers' own parameter inventory
  says a step multiplies (kernels, fused qkv / gate-up, the tied embedding as the output
  projection; not the position embedding), and the compiled program does the full products: a
  missing, extra or pruned (sliced) product fails."""
  import jax

  import jaxsteer

  cfg_cls, model_cls, kw = bench_models.hf_cases(bench_models.SHAPES["tiny"])[arch]
  extra = {} if arch == "gpt2" else dict(eos_token_id=None, pad_token_id=0)
  hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw, **extra))
  hf.save_pretrained(tmp_path)
  # transformers' own inventory: every 2-D weight but the token and position embeddings, plus the
  # output projection where it is the (tied, so not listed twice) token embedding
  embeddings = ("embed_tokens", "wte", "wpe")
  hf_weights = sum(
    p.numel()
    for n, p in hf.named_parameters()
    if p.ndim == 2 and not any(e in n for e in embeddings)
  )
  if hf.config.tie_word_embeddings:
    hf_weights += hf.get_output_embeddings().weight.numel()
  lm = jaxsteer.load(str(tmp_path), dtype="float32")
  batch = 4
  mm = bench_models.decode_matmuls(lm, batch, steps=3)
  params = bench_models.model_costs(lm.config, batch, 8, mm.steps)["matmul_params"]
  assert mm.nbytes == 4 * params == 4 * hf_weights
  cost = mm.lower().compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA's cost analysis counts the loop body once or per step; either way every product is whole
  assert cost["flops"] >= 2 * batch * params
  out = np.asarray(mm.call())
  assert out.shape[0] == batch and np.isfinite(out).all()
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(lm.params))  # nothing donated
