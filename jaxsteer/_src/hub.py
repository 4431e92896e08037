"""Hugging Face hub downloads with a bounded wait for an endpoint that does not answer.

``huggingface_hub.snapshot_download`` first asks the endpoint (``HF_ENDPOINT``) for the repository's
file list without any timeout: an endpoint that accepts the connection and never replies blocks it
forever. ``snapshot`` asks for that list itself with ``timeout`` seconds, so such an endpoint gives
a clear ``FileNotFoundError`` instead of a hang; file downloads then use the hub's own read
timeouts (``HF_HUB_DOWNLOAD_TIMEOUT``, ``HF_HUB_ETAG_TIMEOUT``).

  >>> from jaxsteer._src import hub
  >>> path = hub.snapshot("gpt2", allow_patterns=["config.json"], timeout=30)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["DEFAULT_TIMEOUT", "snapshot", "hub_timeout"]

# Seconds to wait for the hub's first reply (the repository listing). The public hub answers in
# well under a second; 30 s leaves room for slow mirrors.
DEFAULT_TIMEOUT = 30.0


def hub_timeout() -> float:
  """``JAXSTEER_HUB_TIMEOUT`` (seconds) if set and positive, else ``DEFAULT_TIMEOUT``."""
  text = os.environ.get("JAXSTEER_HUB_TIMEOUT")
  if not text:
    return DEFAULT_TIMEOUT
  try:
    v = float(text)
  except ValueError:
    v = -1.0
  if not v > 0 or v == float("inf"):
    raise ValueError(f"JAXSTEER_HUB_TIMEOUT must be a positive number of seconds, got {text!r}")
  return v


def snapshot(
  repo_id: str,
  *,
  repo_type: str | None = None,
  revision: str | None = None,
  timeout: float | None = None,
  **kw,
) -> pathlib.Path:
  """``huggingface_hub.snapshot_download`` that fails within about ``timeout`` seconds when the
  endpoint never replies (offline use with ``HF_HUB_OFFLINE=1`` skips the check).

  Raises:
    FileNotFoundError: the endpoint did not answer in time, refused, or has no such repository
      (and no cached copy exists); the message names the endpoint and the timeout.
  """
  import huggingface_hub
  from huggingface_hub import constants

  timeout = hub_timeout() if timeout is None else float(timeout)
  where = f"{repo_id!r} ({repo_type or 'model'}) at {constants.ENDPOINT}"
  if not constants.HF_HUB_OFFLINE:
    try:
      huggingface_hub.HfApi().repo_info(
        repo_id, repo_type=repo_type, revision=revision, timeout=timeout
      )
    except Exception as e:  # timeouts, connection errors, 404, auth: the hub's types vary
      if "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower():
        reason = f"no reply within {timeout:g} s (set JAXSTEER_HUB_TIMEOUT to wait longer)"
      else:
        reason = f"{type(e).__name__}: {str(e)[:300]}"
      # A cached copy still serves (local_files_only), as snapshot_download would offline.
      try:
        path = huggingface_hub.snapshot_download(
          repo_id,
          revision=revision,
          local_files_only=True,
          **({"repo_type": repo_type} if repo_type else {}),
          **kw,
        )
      except Exception:
        raise FileNotFoundError(f"cannot download {where}: {reason}") from None
      return pathlib.Path(path)
  if repo_type is not None:
    kw["repo_type"] = repo_type
  try:
    path = huggingface_hub.snapshot_download(repo_id, revision=revision, **kw)
  except Exception as e:
    raise FileNotFoundError(f"cannot download {where}: {type(e).__name__}: {e}") from None
  return pathlib.Path(path)
