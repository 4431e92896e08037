"""Multi-process JAX helpers: process-group initialisation, a global mesh, a local launcher.

>>> from jaxsteer import distributed
>>> distributed.initialize()  # doctest: +SKIP
>>> mesh = distributed.global_mesh((2, 4), ("data", "fsdp"))  # doctest: +SKIP
"""

from jaxsteer._src.distributed import ENV_COORDINATOR as ENV_COORDINATOR
from jaxsteer._src.distributed import ENV_LAUNCHER_PID as ENV_LAUNCHER_PID
from jaxsteer._src.distributed import ENV_NUM_PROCESSES as ENV_NUM_PROCESSES
from jaxsteer._src.distributed import ENV_PROCESS_ID as ENV_PROCESS_ID
from jaxsteer._src.distributed import ProcessResult as ProcessResult
from jaxsteer._src.distributed import exit_with_launcher as exit_with_launcher
from jaxsteer._src.distributed import free_port as free_port
from jaxsteer._src.distributed import global_mesh as global_mesh
from jaxsteer._src.distributed import initialize as initialize
from jaxsteer._src.distributed import launch as launch
from jaxsteer._src.distributed import to_host as to_host
from jaxsteer._src.mesh_rules import check_rules as check_rules

__all__ = [
  "ENV_COORDINATOR",
  "ENV_LAUNCHER_PID",
  "ENV_NUM_PROCESSES",
  "ENV_PROCESS_ID",
  "ProcessResult",
  "check_rules",
  "exit_with_launcher",
  "free_port",
  "global_mesh",
  "initialize",
  "launch",
  "to_host",
]
