"""What every judge client backend shares: the limits and their defaults, URL checks, the retry
loop with back-off and ``Retry-After`` under one total deadline, the request body and the parsing
of a chat-completions reply.

A backend supplies one attempt, ``attempt(remaining_seconds) -> reply bytes``, that raises
``AttemptFailure`` (saying whether a retry may help) on an HTTP error status, a redirect, a timeout,
a connection failure or an oversized reply; ``call_with_retries`` does the rest.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
import urllib.parse
from collections.abc import Callable

from jaxsteer._src.evals.judges.base import JudgeError

# Defaults of the judge HTTP client. A chat completion of <= 512 tokens from a hosted or local
# OpenAI-compatible server takes seconds to about a minute; a reply is a few KB.
JUDGE_CONNECT_TIMEOUT = 10.0
JUDGE_READ_TIMEOUT = 120.0
JUDGE_TOTAL_TIMEOUT = 300.0
JUDGE_MAX_RESPONSE_BYTES = 4_000_000
JUDGE_MAX_BACKOFF = 60.0


def check_judge_url(base_url: str) -> urllib.parse.SplitResult:
  """The split URL of an ``http(s)://host[:port]/path`` judge endpoint.

  Raises:
    ValueError: another scheme (``file:``, ``ftp:``, ...), no host, or credentials, a query or a
      fragment in the URL (the key goes in ``api_key_env``, never in the URL).
  """
  if not isinstance(base_url, str):
    raise ValueError(f"judge URL must be a string, got {type(base_url).__name__}")
  u = urllib.parse.urlsplit(base_url)
  if u.scheme not in ("http", "https"):
    raise ValueError(
      f"judge URL must start with http:// or https://, got scheme {u.scheme or 'none'!r}"
    )
  if not u.hostname:
    raise ValueError("judge URL has no host")
  if u.username or u.password or u.query or u.fragment:
    raise ValueError("judge URL must not carry user:password@, a ?query or a #fragment")
  try:
    u.port  # noqa: B018 (validates the port)
  except ValueError as e:
    raise ValueError(f"judge URL has a bad port: {e}") from None
  return u


def _retry_after(value: str | None) -> float | None:
  """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
  if not value:
    return None
  value = value.strip()
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  if when is None:
    return None
  return max(0.0, when.timestamp() - time.time())


class AttemptFailure(Exception):
  """One failed attempt: ``retry`` says whether another attempt may help, ``wait`` is the server's
  ``Retry-After`` (seconds) if it sent one, ``reach`` marks a failure to get a reply at all."""

  def __init__(self, message: str, retry: bool, wait: float | None = None, reach: bool = False):
    super().__init__(message)
    self.retry, self.wait, self.reach = retry, wait, reach


_HTTPFailure = AttemptFailure  # the earlier private name


def status_failure(status: int, location: str | None, retry_after: str | None, body: bytes):
  """The ``AttemptFailure`` for a non-200 reply: a redirect is never followed (the API key must not
  reach another host) nor retried; 408/425/429/5xx are retried (after ``Retry-After`` if given)."""
  if 300 <= status < 400:
    return AttemptFailure(
      f"answered HTTP {status} redirecting to {location!r}; redirects are not "
      "followed (the API key must never reach another host): pass the final URL",
      False,
    )
  detail = body[:500].decode("utf-8", "replace")
  retry = status in (408, 425, 429) or status >= 500
  return AttemptFailure(f"returned HTTP {status}: {detail}", retry, _retry_after(retry_after))


def check_limits(
  *, connect_timeout, read_timeout, total_timeout, max_response_bytes, retries, backoff
) -> None:
  """Raises ``ValueError`` naming the first limit that is not a positive finite number (retries: an
  integer in [0, 100]; backoff: finite and >= 0)."""
  limits = dict(
    connect_timeout=connect_timeout,
    read_timeout=read_timeout,
    total_timeout=total_timeout,
    max_response_bytes=max_response_bytes,
  )
  for k, v in limits.items():
    if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
      raise ValueError(f"judge {k} must be a positive finite number, got {v!r}")
  if not (isinstance(retries, int) and 0 <= retries <= 100):
    raise ValueError(f"judge retries must be an integer in [0, 100], got {retries!r}")
  if not (math.isfinite(backoff) and backoff >= 0):
    raise ValueError(f"judge backoff must be finite and >= 0, got {backoff!r}")


def chat_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
  """The chat messages of one judge prompt (an optional system message, then the user's)."""
  return ([{"role": "system", "content": system}] if system else []) + [
    {"role": "user", "content": prompt}
  ]


def call_with_retries(
  url: str,
  attempt: Callable[[float], bytes],
  *,
  retries: int,
  backoff: float,
  total_timeout: float,
) -> bytes:
  """``attempt(remaining)``'s reply, retried after retryable failures within ``total_timeout``.

  Back-off ``backoff * 2**n`` seconds, or the server's ``Retry-After`` capped at
  ``JUDGE_MAX_BACKOFF``; no retry starts that would end past the total timeout.

  Raises:
    JudgeError: the last failure, naming ``url`` and the attempt count.
  """
  deadline = time.monotonic() + total_timeout
  n = 0
  while True:
    remaining = deadline - time.monotonic()
    try:
      if remaining <= 0:
        msg = f"no reply within the total timeout ({total_timeout:g} s)"
        raise AttemptFailure(msg, False, reach=True)
      return attempt(remaining)
    except AttemptFailure as e:
      wait = backoff * 2.0**n if e.wait is None else min(e.wait, JUDGE_MAX_BACKOFF)
      left = deadline - time.monotonic()
      if not e.retry or n >= retries or wait >= left:
        note = f" (attempt {n + 1} of {retries + 1})" if retries else ""
        if e.retry and n < retries:
          note += f" (a retry after {wait:.3g} s would pass the total timeout)"
        if e.reach:
          raise JudgeError(f"cannot reach judge endpoint {url}: {e}{note}") from None
        raise JudgeError(f"judge endpoint {url} {e}{note}") from None
      time.sleep(wait)
      n += 1


def reply_content(raw: bytes, url: str) -> str:
  """``choices[0].message.content`` of a chat-completions reply.

  Raises:
    JudgeError: the reply is not JSON of that shape, or the content is not text.
  """
  try:
    data = json.loads(raw)
    content = data["choices"][0]["message"]["content"]
  except (ValueError, KeyError, IndexError, TypeError):
    raise JudgeError(
      f"judge endpoint {url} sent a reply without choices[0].message.content: {raw[:300]!r}"
    ) from None
  if not isinstance(content, str):
    raise JudgeError(f"judge endpoint {url} sent non-text content: {content!r}"[:400])
  return content
