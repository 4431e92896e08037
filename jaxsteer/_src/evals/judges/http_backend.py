"""The standard-library judge client backend (``backend="http"``, the default): one POST per attempt
with ``http.client``, a hard deadline that closes the socket, and a byte cap on the reply."""

from __future__ import annotations

import http.client
import json
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


class _Deadline:
  """Closes a connection's socket when the total time of a call runs out (a trickling server)."""

  def __init__(self, conn, seconds: float):
    self.conn, self.fired = conn, False
    self.timer = threading.Timer(max(seconds, 0.0), self._fire)
    self.timer.daemon = True

  def _fire(self):
    self.fired = True
    sock = getattr(self.conn, "sock", None)
    if sock is not None:
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass

  def __enter__(self):
    self.timer.start()
    return self

  def __exit__(self, *exc):
    self.timer.cancel()


def _post_once(u, body: bytes, headers: dict, *, connect_timeout, read_timeout, remaining, cap):
  """One POST with http.client (no redirects are ever followed); returns the body bytes."""
  cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
  conn = cls(u.hostname, u.port, timeout=min(connect_timeout, remaining))
  path = u.path or "/"
  t0 = time.monotonic()
  resp = None
  with _Deadline(conn, remaining) as dl:
    try:
      conn.connect()
      conn.sock.settimeout(read_timeout)
      conn.request("POST", path, body=body, headers=headers)
      resp = conn.getresponse()
      length = resp.getheader("Content-Length")
      if length is not None and length.strip().isdigit() and int(length) > cap:
        raise AttemptFailure(f"sent a reply of {int(length)} bytes, over the cap of {cap}", False)
      chunks, size = [], 0
      while True:
        chunk = resp.read(min(65536, cap + 1 - size))
        if not chunk:
          break
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
          raise AttemptFailure(f"sent a reply over the cap of {cap} bytes", False)
      raw = b"".join(chunks)
      if dl.fired:
        raise TimeoutError("total timeout")
    except AttemptFailure:
      raise
    except (OSError, http.client.HTTPException) as e:
      if dl.fired or time.monotonic() - t0 >= remaining:
        msg = f"no complete reply within the total timeout ({remaining:.3g} s left)"
        raise AttemptFailure(msg, False, reach=True) from None
      if isinstance(e, TimeoutError | socket.timeout):
        raise AttemptFailure(f"timed out ({e})", True, reach=True) from None
      raise AttemptFailure(f"{type(e).__name__}: {e}", True, reach=True) from None
    finally:
      if resp is not None:  # the response holds the socket's file: close it too, or the fd leaks
        resp.close()
      conn.close()
  if resp.status != 200:
    raise status_failure(
      resp.status, resp.getheader("Location"), resp.getheader("Retry-After"), raw
    )
  return raw


def http_complete(
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
  """A ``complete(prompt) -> str`` on ``http.client`` for the checked URL ``u`` (see
  ``openai_complete`` for the arguments; ``url`` is the chat-completions URL named in errors)."""
  target = u._replace(path=u.path.rstrip("/") + "/chat/completions")
  cap = int(max_response_bytes)

  def complete(prompt: str) -> str:
    body = json.dumps(
      {
        "model": model,
        "messages": chat_messages(prompt, system),
        "temperature": temperature,
        "max_tokens": max_tokens,
      }
    ).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(api_key_env) if api_key_env else None
    if key:
      headers["Authorization"] = f"Bearer {key}"

    def attempt(remaining: float) -> bytes:
      return _post_once(
        target,
        body,
        headers,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        remaining=remaining,
        cap=cap,
      )

    raw = call_with_retries(
      url, attempt, retries=retries, backoff=backoff, total_timeout=total_timeout
    )
    return reply_content(raw, url)

  return complete
