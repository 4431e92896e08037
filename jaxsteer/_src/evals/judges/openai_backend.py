"""The judge client backend on the official ``openai`` package (``backend="openai"``; optional:
``pip install 'jaxsteer[evals]'``).

The SDK builds and sends the request; the limits are this library's, the same as the ``http``
backend's: the SDK's own retries are off (``max_retries=0``) and ``client.call_with_retries`` retries
instead, under one total deadline; redirects are not followed; proxies from the environment are
not used; the reply is read through a transport that refuses more than ``max_response_bytes``
(announced or streamed, error bodies included; a compressed reply is refused, so the cap counts
what is parsed) and, once the reply's headers are in, shuts the socket down when the total time runs
out (a trickling server). Waiting for the headers is bounded by the connect and read timeouts,
each at most the time left. The key is read from ``api_key_env`` at each call; without one no
``Authorization`` header is sent (the SDK itself would fall back to ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import threading
import time

from jaxsteer._src.evals.judges.base import CompleteFn
from jaxsteer._src.evals.judges.client import (
  AttemptFailure,
  call_with_retries,
  chat_messages,
  reply_content,
  status_failure,
)

_INSTALL = "pip install openai (or pip install 'jaxsteer[evals]')"


def _openai():
  try:
    import openai
  except ImportError:
    raise ImportError(f"the judge backend 'openai' needs the openai package: {_INSTALL}") from None
  return openai


class _Refused(Exception):
  """Carries an ``AttemptFailure`` out of the SDK (which re-raises unknown exceptions as they are)."""

  def __init__(self, failure: AttemptFailure):
    super().__init__(str(failure))
    self.failure = failure


class _Attempt:
  """One attempt's limits, shared with the transport: byte cap, deadline, the socket to cut."""

  def __init__(self, remaining: float, cap: int):
    self.cap, self.deadline, self.fired, self.sock = cap, time.monotonic() + remaining, False, None
    self._lock = threading.Lock()
    self.timer = threading.Timer(max(remaining, 0.0), self._fire)
    self.timer.daemon = True

  def _fire(self):
    with self._lock:
      self.fired, sock = True, self.sock
    _shutdown(sock)

  def watch(self, sock) -> None:
    with self._lock:
      self.sock, fired = sock, self.fired
    if fired:
      _shutdown(sock)

  def over_time(self) -> bool:
    return self.fired or time.monotonic() >= self.deadline


def _shutdown(sock) -> None:
  if sock is not None:
    try:
      sock.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass


@functools.cache
def _transport_classes(hx_name: str):
  """The capped transport and byte stream on the SDK's HTTP library (``httpx`` or ``httpx2``)."""
  hx = importlib.import_module(hx_name)

  class CappedStream(hx.SyncByteStream):
    def __init__(self, inner, att: _Attempt):
      self.inner, self.att = inner, att

    def __iter__(self):
      size, cap = 0, self.att.cap
      for chunk in self.inner:
        size += len(chunk)
        if size > cap:
          raise _Refused(AttemptFailure(f"sent a reply over the cap of {cap} bytes", False))
        if self.att.over_time():
          raise _Refused(_total_timeout())
        yield chunk

    def close(self):
      self.inner.close()

  class CappedTransport(hx.BaseTransport):
    def __init__(self, att: _Attempt):
      self.inner, self.att = hx.HTTPTransport(), att

    def handle_request(self, request):
      resp = self.inner.handle_request(request)
      stream = resp.extensions.get("network_stream")
      try:
        sock = stream.get_extra_info("socket") if stream is not None else None
      except Exception:  # a transport without the extension: the per-chunk deadline check remains
        sock = None
      self.att.watch(sock)
      encoding = resp.headers.get("content-encoding", "identity").strip().lower()
      if encoding not in ("", "identity"):  # asked for identity: a compressed body could inflate
        resp.close()  # past the cap after it is counted
        raise _Refused(AttemptFailure(f"sent a {encoding!r}-encoded reply (asked for none)", False))
      length = resp.headers.get("content-length")
      cap = self.att.cap
      if length is not None and length.strip().isdigit() and int(length) > cap:
        resp.close()
        raise _Refused(
          AttemptFailure(f"sent a reply of {int(length)} bytes, over the cap of {cap}", False)
        )
      return hx.Response(
        resp.status_code,
        headers=resp.headers,
        stream=CappedStream(resp.stream, self.att),
        extensions=resp.extensions,
      )

    def close(self):
      self.inner.close()

  return hx, CappedTransport


def _http_library(openai) -> str:
  """The name of the HTTP library the installed SDK is built on (``httpx2`` or ``httpx``)."""
  for cls in openai.DefaultHttpxClient.__mro__:
    name = cls.__module__.split(".")[0]
    if name in ("httpx", "httpx2"):
      return name
  raise ImportError(f"cannot tell which HTTP library openai {openai.__version__} uses")


def _total_timeout() -> AttemptFailure:
  return AttemptFailure("no complete reply within the total timeout", False, reach=True)


def openai_sdk_complete(
  u,
  url: str,
  model: str,
  *,
  api_key_env: str | None,
  temperature: float,
  max_tokens: int,
  connect_timeout: float,
  read_timeout: float,
  total_timeout: float,
  retries: int,
  backoff: float,
  max_response_bytes: int,
  system: str | None,
) -> CompleteFn:
  """A ``complete(prompt) -> str`` on the ``openai`` client (see ``openai_complete`` for the
  arguments). Raises ``ImportError`` at once when ``openai`` is not installed."""
  openai = _openai()
  hx, transport_cls = _transport_classes(_http_library(openai))
  base_url = u.geturl().rstrip("/")
  cap = int(max_response_bytes)

  def attempt(prompt: str, key: str | None, remaining: float) -> bytes:
    att = _Attempt(remaining, cap)
    timeout = hx.Timeout(
      connect=min(connect_timeout, remaining),
      read=min(read_timeout, remaining),
      write=min(read_timeout, remaining),
      pool=min(connect_timeout, remaining),
    )
    http_client = hx.Client(
      transport=transport_cls(att), follow_redirects=False, trust_env=False, timeout=timeout
    )
    client = openai.OpenAI(
      api_key=key or "no-key",
      base_url=base_url,
      max_retries=0,
      timeout=timeout,
      http_client=http_client,
      default_headers={"Accept-Encoding": "identity"},
    )
    att.timer.start()
    try:
      with client:
        resp = client.chat.completions.with_raw_response.create(
          model=model,
          messages=chat_messages(prompt, system),
          temperature=temperature,
          max_tokens=max_tokens,
          extra_headers=None if key else {"Authorization": openai.Omit()},
        )
        raw, status, headers = resp.content, resp.status_code, resp.headers
    except _Refused as e:
      raise e.failure from None
    except openai.APIStatusError as e:
      h = e.response.headers
      raise status_failure(
        e.status_code, h.get("location"), h.get("retry-after"), e.response.content
      ) from None
    except (openai.APITimeoutError, openai.APIConnectionError) as e:
      if att.over_time():
        raise _total_timeout() from None
      cause = e.__cause__ or e
      if isinstance(e, openai.APITimeoutError):
        raise AttemptFailure(f"timed out ({type(cause).__name__})", True, reach=True) from None
      raise AttemptFailure(f"{type(cause).__name__}: {cause}", True, reach=True) from None
    finally:
      att.timer.cancel()
    if status != 200:
      raise status_failure(status, headers.get("location"), headers.get("retry-after"), raw)
    return raw

  def complete(prompt: str) -> str:
    key = os.environ.get(api_key_env) if api_key_env else None
    raw = call_with_retries(
      url,
      lambda remaining: attempt(prompt, key, remaining),
      retries=retries,
      backoff=backoff,
      total_timeout=total_timeout,
    )
    return reply_content(raw, url)

  return complete
