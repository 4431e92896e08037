"""GPT-2: learned positions, LayerNorm, fused Conv1D ``c_attn`` (already ``(in, out)``)."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, _first, hf_float, hf_ids, hf_int
from jaxsteer._src.models.registry import Tensor


def parse(hf) -> ModelConfig:
  d = hf_int(hf, "n_embd")
  h = hf_int(hf, "n_head")
  if h <= 0 or d % h:
    raise ValueError(f"n_embd ({d}) is not a multiple of n_head ({h})")
  eos = hf_ids(hf.get("eos_token_id"))
  return ModelConfig(
    arch="gpt2",
    vocab_size=hf_int(hf, "vocab_size"),
    hidden_size=d,
    intermediate_size=hf_int(hf, "n_inner", None) or 4 * d,
    num_layers=hf_int(hf, "n_layer"),
    num_heads=h,
    num_kv_heads=h,
    head_dim=d // h,
    max_position_embeddings=hf_int(hf, "n_positions"),
    norm_eps=hf_float(hf, "layer_norm_epsilon", 1e-5),
    tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
    attention_bias=True,
    attention_out_bias=True,
    mlp_bias=True,
    hidden_act=hf.get("activation_function", "gelu_new"),
    bos_token_id=_first(hf_ids(hf.get("bos_token_id"))),
    eos_token_id=_first(eos),
    eos_token_ids=eos,
    pad_token_id=_first(hf_ids(hf.get("pad_token_id"))),
  )


def weights(cfg: ModelConfig, names=None, *, prefix=None, lm_head="lm_head.weight"):
  if prefix is None:
    prefix = registry.pick_prefix(names, ("transformer.", ""), "wte.weight", "GPT-2 embeddings")
  d = cfg.hidden_size
  out = [
    Tensor(f"{prefix}wte.weight", ("embed/embedding",)),
    Tensor(f"{prefix}wpe.weight", ("wpe/embedding",)),
  ]
  for i in range(cfg.num_layers):
    p, q = f"{prefix}h.{i}.", f"layers_{i}/"
    qkv = tuple(f"{q}attn/{n}" for n in ("q_proj", "k_proj", "v_proj"))
    out += [
      Tensor(f"{p}attn.c_attn.weight", tuple(n + "/kernel" for n in qkv), "split_cols", (d,) * 3),
      Tensor(f"{p}attn.c_attn.bias", tuple(n + "/bias" for n in qkv), "split", (d,) * 3),
      Tensor(f"{p}attn.c_proj.weight", (f"{q}attn/o_proj/kernel",)),
      Tensor(f"{p}attn.c_proj.bias", (f"{q}attn/o_proj/bias",)),
      Tensor(f"{p}mlp.c_fc.weight", (f"{q}mlp/up_proj/kernel",)),
      Tensor(f"{p}mlp.c_fc.bias", (f"{q}mlp/up_proj/bias",)),
      Tensor(f"{p}mlp.c_proj.weight", (f"{q}mlp/down_proj/kernel",)),
      Tensor(f"{p}mlp.c_proj.bias", (f"{q}mlp/down_proj/bias",)),
    ]
    for src, dst in (("ln_1", "input_norm"), ("ln_2", "post_attention_norm")):
      out.append(Tensor(f"{p}{src}.weight", (f"{q}{dst}/scale",)))
      out.append(Tensor(f"{p}{src}.bias", (f"{q}{dst}/bias",)))
  out.append(Tensor(f"{prefix}ln_f.weight", ("norm/scale",)))
  out.append(Tensor(f"{prefix}ln_f.bias", ("norm/bias",)))
  if not cfg.tie_word_embeddings:
    out.append(Tensor(lm_head, ("lm_head/kernel",), "T"))
  return tuple(out)


ARCH = registry.register(registry.Architecture("gpt2", parse, _decoder.module, weights))
