"""Flax Linen causal language models that load Hugging Face and llama2.c checkpoints.

Llama 2/3/3.1/3.2 (llama3 RoPE scaling, grouped-query attention, tied or untied embeddings),
Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3 (q/k norm), Phi-3 (fused projections,
LongRoPE), Gemma 2 and Gemma 3 text (soft-capping, local/global layers) and GPT-2, with KV-cache
generation; LLaVA-1.5 and LLaVA-NeXT vision-language models (``VisionLanguageModel``) on the same
text models. Every architecture is one entry of a registry (``get_architecture(model_type)``:
config parser, Flax module and a two-way HF <-> Flax weight map).

  >>> import jaxsteer
  >>> lm = jaxsteer.load("stories260K.bin")  # doctest: +SKIP
  >>> lm.generate("Once upon a time", max_new_tokens=32)  # doctest: +SKIP
"""

from jaxsteer._src.models.config import ModelConfig as ModelConfig
from jaxsteer._src.models.llava import Llava as Llava
from jaxsteer._src.models.llava import LlavaConfig as LlavaConfig
from jaxsteer._src.models.llava import VisionLanguageModel as VisionLanguageModel
from jaxsteer._src.models.lm import LanguageModel as LanguageModel
from jaxsteer._src.models.lm import init_cache as init_cache
from jaxsteer._src.models.lm import sample_token as sample_token
from jaxsteer._src.models.loader import download as download
from jaxsteer._src.models.loader import from_params as from_params
from jaxsteer._src.models.loader import init_random as init_random
from jaxsteer._src.models.loader import load as load
from jaxsteer._src.models.loader import relayout as relayout
from jaxsteer._src.models.loading import DEFAULT_RULES as DEFAULT_RULES
from jaxsteer._src.models.loading import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxsteer._src.models.loading import param_shardings as param_shardings
from jaxsteer._src.models.loading import read_llama2c as read_llama2c
from jaxsteer._src.models.modules import MLP as MLP
from jaxsteer._src.models.modules import Attention as Attention
from jaxsteer._src.models.modules import CausalLM as CausalLM
from jaxsteer._src.models.modules import DecoderLayer as DecoderLayer
from jaxsteer._src.models.modules import layer_of as layer_of
from jaxsteer._src.models.modules import stack_layers as stack_layers
from jaxsteer._src.models.modules import unstack_layers as unstack_layers
from jaxsteer._src.models.registry import Architecture as Architecture
from jaxsteer._src.models.registry import Tensor as WeightTensor
from jaxsteer._src.models.registry import flax_to_hf as flax_to_hf
from jaxsteer._src.models.registry import get as get_architecture
from jaxsteer._src.models.registry import hf_to_flax as hf_to_flax
from jaxsteer._src.models.registry import known as known_architectures
from jaxsteer._src.models.registry import register as register_architecture
from jaxsteer._src.models.tokenizer import HFTokenizer as HFTokenizer
from jaxsteer._src.models.tokenizer import Llama2cTokenizer as Llama2cTokenizer
from jaxsteer._src.models.vision import VisionConfig as VisionConfig
from jaxsteer._src.models.vision import VisionTower as VisionTower

SUPPORTED_ARCHITECTURES = known_architectures()

__all__ = [
  "SUPPORTED_ARCHITECTURES",
  "Architecture",
  "WeightTensor",
  "flax_to_hf",
  "get_architecture",
  "hf_to_flax",
  "known_architectures",
  "register_architecture",
  "DEFAULT_RULES",
  "PARAM_LOGICAL_AXES",
  "Attention",
  "CausalLM",
  "DecoderLayer",
  "HFTokenizer",
  "LanguageModel",
  "Llama2cTokenizer",
  "Llava",
  "LlavaConfig",
  "MLP",
  "ModelConfig",
  "VisionConfig",
  "VisionLanguageModel",
  "VisionTower",
  "download",
  "from_params",
  "init_cache",
  "init_random",
  "layer_of",
  "load",
  "param_shardings",
  "read_llama2c",
  "relayout",
  "sample_token",
  "stack_layers",
  "unstack_layers",
]
