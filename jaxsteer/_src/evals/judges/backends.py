"""The judge client backends for OpenAI-compatible chat-completions endpoints, by name.

``COMPLETE_BACKENDS`` maps a name to a factory of ``complete(prompt) -> str``:

* ``"http"`` (default): the standard library's ``http.client`` (``http_backend``);
* ``"openai"``: the official ``openai`` client (``openai_backend``; optional: ``pip install
  'jaxsteer[evals]'``).

Both enforce the same limits (connect, read and total timeouts, bounded retries with back-off and
``Retry-After``, a reply byte cap, no redirects) through the shared retry loop of ``client``.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxsteer._src.evals.judges.base import CompleteFn
from jaxsteer._src.evals.judges.client import (
  JUDGE_CONNECT_TIMEOUT,
  JUDGE_MAX_RESPONSE_BYTES,
  JUDGE_READ_TIMEOUT,
  JUDGE_TOTAL_TIMEOUT,
  check_judge_url,
  check_limits,
)
from jaxsteer._src.evals.judges.http_backend import http_complete
from jaxsteer._src.evals.judges.openai_backend import openai_sdk_complete

COMPLETE_BACKENDS: dict[str, Callable[..., CompleteFn]] = {
  "http": http_complete,
  "openai": openai_sdk_complete,
}


def openai_complete(
  base_url: str,
  model: str,
  *,
  api_key_env: str | None = "OPENAI_API_KEY",
  temperature: float = 0.0,
  max_tokens: int = 512,
  timeout: float | None = None,
  connect_timeout: float = JUDGE_CONNECT_TIMEOUT,
  read_timeout: float = JUDGE_READ_TIMEOUT,
  total_timeout: float = JUDGE_TOTAL_TIMEOUT,
  retries: int = 2,
  backoff: float = 1.0,
  max_response_bytes: int = JUDGE_MAX_RESPONSE_BYTES,
  system: str | None = None,
  backend: str = "http",
) -> CompleteFn:
  """A ``complete(prompt) -> str`` for an OpenAI-compatible chat-completions endpoint.

  Sends ``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature",
  "max_tokens"}`` and returns ``choices[0].message.content``. The client trusts the endpoint with
  the prompts and the API key only: redirects are never followed (a 3xx is an error, so the key
  cannot leak to another host), only ``http``/``https`` URLs are accepted, and a slow, silent or
  over-long reply fails within the limits below.

  Args:
    base_url: the API root, e.g. ``"https://api.openai.com/v1"`` or ``"http://localhost:8000/v1"``.
    model: the model name the server expects.
    api_key_env: environment variable holding the API key (sent as ``Authorization: Bearer``);
      when unset or empty no key is sent (fine for local servers). The key is read at each call.
    temperature: sampling temperature (0 for reproducible judging).
    max_tokens: reply length limit.
    timeout: if given, sets both ``connect_timeout`` and ``read_timeout`` (older spelling).
    connect_timeout: seconds to establish a connection.
    read_timeout: seconds the server may stay silent while we wait for bytes.
    total_timeout: seconds one ``complete`` call may take in all, retries and waits included (a
      server trickling bytes is cut off here).
    retries: extra attempts after HTTP 408/425/429/5xx, a timeout or a connection failure;
      exponential back-off ``backoff * 2**attempt`` seconds, or the server's ``Retry-After``
      (capped at 60 s and at the time left).
    backoff: first back-off in seconds.
    max_response_bytes: a longer reply is refused.
    system: optional system message.
    backend: a ``COMPLETE_BACKENDS`` name: ``"http"`` (standard library, default) or ``"openai"``
      (the official ``openai`` client; ``pip install 'jaxsteer[evals]'``).

  Raises:
    ValueError: a bad URL (see ``check_judge_url``), a non-positive limit or an unknown backend.
    ImportError: ``backend="openai"`` without the ``openai`` package.
    JudgeError (a ``RuntimeError``; from the returned function): the server answered with an
      error status or a redirect, could not be reached in time, sent too much, or sent a reply
      without ``choices[0].message.content``.
  """
  try:
    factory = COMPLETE_BACKENDS[backend]
  except (KeyError, TypeError):
    raise ValueError(
      f"unknown judge backend {backend!r}; registered: {sorted(COMPLETE_BACKENDS)}"
    ) from None
  u = check_judge_url(base_url)
  if timeout is not None:
    connect_timeout = read_timeout = timeout
  check_limits(
    connect_timeout=connect_timeout,
    read_timeout=read_timeout,
    total_timeout=total_timeout,
    max_response_bytes=max_response_bytes,
    retries=retries,
    backoff=backoff,
  )
  return factory(
    u,
    base_url.rstrip("/") + "/chat/completions",
    model,
    api_key_env=api_key_env,
    temperature=temperature,
    max_tokens=max_tokens,
    connect_timeout=connect_timeout,
    read_timeout=read_timeout,
    total_timeout=total_timeout,
    retries=retries,
    backoff=backoff,
    max_response_bytes=max_response_bytes,
    system=system,
  )
