"""XLA compiler options of the library's jitted programs on the CPU backend, by kind of program.

>>> from jaxsteer import compile_options
>>> f = jax.jit(my_ig, compiler_options=compile_options.options("ig"))  # doctest: +SKIP

``JAXSTEER_XLA_OPTIONS=0`` in the environment gives every program XLA's defaults.
"""

from jaxsteer._src.compile_options import ENV_VAR as ENV_VAR
from jaxsteer._src.compile_options import PROGRAMS as PROGRAMS
from jaxsteer._src.compile_options import jit as jit
from jaxsteer._src.compile_options import options as options

__all__ = ["ENV_VAR", "PROGRAMS", "jit", "options"]
