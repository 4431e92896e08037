"""Fixtures for the paca_jax tests: the tiny Llama-shaped model, its params and a batch."""

import jax
import jax.numpy as jnp
import pytest

from paca_jax.models import CONFIGS, TinyLlama

TARGETS = r".*_proj"


@pytest.fixture(scope="session")
def tiny():
  model = TinyLlama(CONFIGS["nano"])
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  toks = jax.random.randint(jax.random.key(2), (8, 9), 0, 64)
  batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
  return model, params, batch
