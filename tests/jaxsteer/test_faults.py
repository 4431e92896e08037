"""Bad inputs and faults (issue 17): judge endpoint misbehaviour, hub that never replies, hostile
safetensors headers, llama2.c files that start like pickles, over-long prompts, resumable judging.

Every server is a local 127.0.0.1 socket started and stopped by the test; each waits at most a few
seconds (the client's timeouts bound it) and answers a bounded number of requests.
"""

import contextlib
import gzip
import json
import pickle
import socket
import struct
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from jaxsteer import evals
from jaxsteer._src.evals.judges import client as judge_client
from jaxsteer._src.models import loading
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint, SafetensorsFile

# -- raw local servers -------------------------------------------------------------------------


class RawServer:
  """A 127.0.0.1 TCP server; ``handler(conn, n)`` serves the n-th connection (at most ``limit``).

  Records each request's head (request line and headers). ``close`` stops it and closes every
  connection, so a handler blocked on a silent peer ends too.
  """

  def __init__(self, handler, limit=8):
    self.sock = socket.create_server(("127.0.0.1", 0))
    self.sock.settimeout(0.2)
    self.port = self.sock.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}/v1"
    self.handler, self.limit = handler, limit
    self.heads, self.conns, self.stop = [], [], threading.Event()
    self.thread = threading.Thread(target=self._serve, daemon=True)
    self.thread.start()

  def _serve(self):
    n = 0
    while not self.stop.is_set() and n < self.limit:
      try:
        conn, _ = self.sock.accept()
      except TimeoutError:
        continue
      except OSError:
        return
      self.conns.append(conn)
      threading.Thread(target=self._one, args=(conn, n), daemon=True).start()
      n += 1

  def _one(self, conn, n):
    with contextlib.suppress(OSError):
      conn.settimeout(10)
      data = b""
      while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
          return
        data += chunk
      head, _, rest = data.partition(b"\r\n\r\n")
      headers = dict(
        line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
      )
      length = int(headers.get("Content-Length", 0))
      while len(rest) < length:
        chunk = conn.recv(4096)
        if not chunk:
          break
        rest += chunk
      self.heads.append(headers)
      self.handler(conn, n, self)
    conn.close()

  def close(self):
    self.stop.set()
    for c in self.conns:
      with contextlib.suppress(OSError):  # the peer may have gone already
        c.shutdown(socket.SHUT_RDWR)
      c.close()
    self.sock.close()
    self.thread.join(timeout=5)


@pytest.fixture
def serve():
  servers = []

  def make(handler, limit=8):
    s = RawServer(handler, limit)
    servers.append(s)
    return s

  yield make
  for s in servers:
    s.close()


def reply(status=200, body=b"", headers=()):
  head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close", *headers]
  return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chat(content="Rating: 4"):
  return json.dumps({"choices": [{"message": {"content": content}}]}).encode()


@pytest.fixture
def sleeps(monkeypatch):
  """Records the judge client's back-off sleeps instead of sleeping."""
  got = []
  monkeypatch.setattr(judge_client.time, "sleep", got.append)
  return got


@pytest.fixture(params=["http", "openai"])
def backend(request):
  """Each judge client backend: the standard library's, and the openai client's (skipped when the
  optional ``openai`` package is missing; the ``test`` extra installs it)."""
  if request.param == "openai":
    pytest.importorskip("openai")
  return request.param


def _head(server, n, name):
  return {k.lower(): v for k, v in server.heads[n].items()}.get(name.lower())


# -- row 2: redirects carry no credentials ---------------------------------------------------------


def test_judge_redirect_to_another_host_is_refused_without_sending_the_key(
  serve, monkeypatch, backend
):
  other = serve(lambda c, n, s: c.sendall(reply(200, chat("Rating: 6"))))
  target = f"http://localhost:{other.port}/v1/chat/completions"
  first = serve(lambda c, n, s: c.sendall(reply(302, b"", [f"Location: {target}"])))
  monkeypatch.setenv("JUDGE_KEY", "sk-secret")
  complete = evals.openai_complete(
    first.url, "m", api_key_env="JUDGE_KEY", retries=2, backend=backend
  )
  with pytest.raises(RuntimeError, match="302 redirecting.*not followed"):
    complete("hi")
  assert _head(first, 0, "Authorization") == "Bearer sk-secret"
  assert len(first.heads) == 1  # a redirect is not retried
  assert other.heads == []  # nothing, so no key, reached the other host


def test_judge_url_must_be_http(monkeypatch):
  for url in ("file:///etc/passwd#", "ftp://x/v1", "http://user:pw@host/v1", "http:///v1", "x"):
    with pytest.raises(ValueError, match="judge URL"):
      evals.openai_complete(url, "m")
  with pytest.raises(ValueError, match="total_timeout"):
    evals.openai_complete("http://127.0.0.1:1/v1", "m", total_timeout=float("nan"))


# -- row 3: timeouts, bounded retries, Retry-After, size cap ------------------------------------


def test_judge_silent_server_times_out(serve, sleeps, backend):
  silent = serve(lambda c, n, s: s.stop.wait(10))  # reads the request, never answers
  complete = evals.openai_complete(
    silent.url, "m", read_timeout=0.3, retries=1, backoff=0.01, backend=backend
  )
  with pytest.raises(RuntimeError, match="cannot reach judge endpoint.*timed out"):
    complete("hi")
  assert len(silent.heads) == 2 and sleeps == [0.01]  # one retry after the back-off


def test_judge_trickling_server_hits_the_total_timeout(serve, backend):
  def trickle(conn, n, s):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not s.stop.is_set():  # one byte every 0.1 s: never silent for read_timeout
      conn.sendall(b" ")
      time.sleep(0.1)

  srv = serve(trickle)
  complete = evals.openai_complete(
    srv.url, "m", read_timeout=5, total_timeout=1.0, retries=3, backend=backend
  )
  with pytest.raises(RuntimeError, match="total timeout"):
    complete("hi")
  assert len(srv.heads) == 1  # the total budget is spent: no retry


def test_judge_retries_are_bounded_and_honour_retry_after(serve, sleeps, backend):
  def busy_then_ok(conn, n, s):
    if n == 0:
      conn.sendall(reply(429, b"slow down", ["Retry-After: 2"]))
    else:
      conn.sendall(reply(200, chat("Rating: 5")))

  srv = serve(busy_then_ok)
  complete = evals.openai_complete(srv.url, "m", retries=2, backoff=0.5, backend=backend)
  assert complete("hi") == "Rating: 5"
  assert sleeps == [2.0]  # the server's Retry-After, not the back-off
  down = serve(lambda c, n, s: c.sendall(reply(503, b"down")))
  sleeps.clear()
  with pytest.raises(RuntimeError, match=r"HTTP 503: down \(attempt 3 of 3\)"):
    evals.openai_complete(down.url, "m", retries=2, backoff=0.5, backend=backend)("hi")
  assert len(down.heads) == 3 and sleeps == [0.5, 1.0]
  late = serve(lambda c, n, s: c.sendall(reply(429, b"", ["Retry-After: 3600"])))
  with pytest.raises(RuntimeError, match="would pass the total timeout"):
    evals.openai_complete(late.url, "m", retries=2, total_timeout=30, backend=backend)("hi")
  assert len(late.heads) == 1


def test_judge_reply_size_is_capped(serve, backend):
  big = serve(lambda c, n, s: c.sendall(reply(200, chat("x" * 5000))))
  with pytest.raises(RuntimeError, match="over the cap of 1000"):
    evals.openai_complete(big.url, "m", max_response_bytes=1000, backend=backend)("hi")

  def unsized(conn, n, s):  # no Content-Length: read until close, still capped
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 5000)
    conn.close()

  srv = serve(unsized)
  with pytest.raises(RuntimeError, match="over the cap of 1000"):
    evals.openai_complete(srv.url, "m", max_response_bytes=1000, backend=backend)("hi")
  # a compressed body (never asked for) would be counted before it inflates: refused
  zipped = gzip.compress(chat("z" * 50_000))
  gz = serve(lambda c, n, s: c.sendall(reply(200, zipped, ["Content-Encoding: gzip"])))
  with pytest.raises(RuntimeError, match="gzip'-encoded reply|without choices"):
    evals.openai_complete(gz.url, "m", max_response_bytes=1000, backend=backend)("hi")


# -- row 4: generations saved before judging, judging resumable, per-item errors ----------------


class _Item:
  def __init__(self, i):
    self.index, self.image_id, self.question_type = i, f"img{i}", "attribute"
    self.question, self.gt_answer, self.image_content = f"q{i}?", f"answer {i}", ["thing"]
    self.reference = None

  def image(self):
    return None


def test_mmhal_judge_failure_keeps_generations_and_resumes(tmp_path):
  items = [_Item(i) for i in range(4)]
  calls = []

  def gen(q, image):
    calls.append(q)
    return "reply to " + q

  def flaky(prompt):
    if "q2?" in prompt:
      raise RuntimeError("judge endpoint said 500")
    return "Rating: 4"

  header = {"benchmark": "mmhal", "questions": [it.question for it in items]}
  log = evals.EvalLog(tmp_path / "r.json.log.jsonl", header)
  rep = evals.evaluate_mmhal(
    {"a": gen}, items, evals.LLMJudge(flaky), progress=False, log=log, on_error="record"
  )
  recs = rep.records["a"]
  assert [r["score"] for r in recs] == [4, 4, None, 4] and "500" in recs[2]["error"]
  assert rep.methods["a"]["n"] == 3 and rep.methods["a"]["errors"] == 1
  assert len(calls) == 4
  # a rerun generates nothing again and asks the judge only about the failed item
  asked = []
  log = evals.EvalLog(tmp_path / "r.json.log.jsonl", header)
  rep = evals.evaluate_mmhal(
    {"a": gen},
    items,
    evals.LLMJudge(lambda p: asked.append(p) or "Rating: 1"),
    progress=False,
    log=log,
    on_error="record",
  )
  assert len(calls) == 4 and len(asked) == 1 and "q2?" in asked[0]
  assert [r["score"] for r in rep.records["a"]] == [4, 4, 1, 4] and "errors" not in rep.methods["a"]
  with pytest.raises(ValueError, match="other settings \\(questions\\)"):
    evals.EvalLog(tmp_path / "r.json.log.jsonl", {**header, "questions": ["other?"]})


def test_generation_is_saved_before_a_judge_that_is_down(tmp_path):
  items = [_Item(i) for i in range(8)]

  def down(prompt):
    raise RuntimeError("cannot reach judge endpoint")

  log = evals.EvalLog(tmp_path / "log.jsonl", {"n": 8})
  with pytest.raises(RuntimeError, match="failed 5 times in a row.*log.jsonl.*resume"):
    evals.evaluate_spavl(
      {"unsteered": lambda q, im: "u " + q, "grains": lambda q, im: "g " + q},
      items,
      evals.LLMJudge(down),
      progress=False,
      log=log,
      on_error="record",
    )
  again = evals.EvalLog(tmp_path / "log.jsonl", {"n": 8})
  assert len(again.responses["unsteered"]) == len(again.responses["grains"]) == 8
  assert len(again.errors) == 5
  # a torn last line (killed mid-write) is ignored
  with open(tmp_path / "log.jsonl", "a") as f:
    f.write('{"kind": "response", "meth')
  assert len(evals.EvalLog(tmp_path / "log.jsonl", {"n": 8}).responses["grains"]) == 8


# -- row 5: hub endpoint that never replies ---------------------------------------------------


def test_hub_endpoint_that_never_replies_fails_within_the_timeout(serve, monkeypatch, tmp_path):
  from huggingface_hub import constants

  silent = serve(lambda c, n, s: s.stop.wait(10), limit=6)
  monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.port}")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("JAXSTEER_HUB_TIMEOUT", "0.5")
  import jaxsteer

  with pytest.raises(FileNotFoundError, match=r"no reply within 0\.5 s"):
    jaxsteer.load("someorg/somemodel")
  assert 1 <= len(silent.heads) <= 6
  monkeypatch.setenv("JAXSTEER_HUB_TIMEOUT", "nan")
  with pytest.raises(ValueError, match="JAXSTEER_HUB_TIMEOUT"):
    jaxsteer.load("someorg/somemodel")


# -- row 10: safetensors headers ---------------------------------------------------------------


def _st(path, header, data=b""):
  raw = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
  return path


def test_safetensors_hostile_headers_are_refused(tmp_path):
  f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
  ok = _st(tmp_path / "ok.safetensors", {"a": f32}, np.float32([1, 2]).tobytes())
  np.testing.assert_array_equal(SafetensorsFile(ok)["a"], [1, 2])
  cases = {
    "overlap": ({"a": f32, "b": {**f32, "data_offsets": [4, 12]}}, 16, "overlap"),
    "negative": ({"a": {**f32, "shape": [-2, -1]}}, 8, "non-negative integers"),
    "string dim": ({"a": {**f32, "shape": ["2"]}}, 8, "non-negative integers"),
    "list": ([1, 2], 0, "header is a JSON list"),
    "entry": ({"a": [1]}, 0, "not an object"),
    "dtype": ({"a": {**f32, "dtype": "F8"}}, 8, "unsupported dtype"),
    "past end": ({"a": {**f32, "data_offsets": [8, 16]}}, 8, "data section has 8 bytes"),
    "metadata": ({"__metadata__": {"k": 1}, "a": f32}, 8, "__metadata__"),
  }
  for name, (header, n, msg) in cases.items():
    p = _st(tmp_path / f"{name}.safetensors", header, b"\0" * n)
    with pytest.raises(ValueError, match=msg):
      SafetensorsFile(p)


def test_safetensors_index_cannot_name_files_outside_the_model_dir(tmp_path):
  f32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
  (tmp_path / "other").mkdir()
  _st(tmp_path / "other" / "file.safetensors", {"w": f32}, b"\0" * 4)
  model = tmp_path / "model"
  model.mkdir()
  for fname in ("../other/file.safetensors", str(tmp_path / "other" / "file.safetensors")):
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": fname}}))
    with pytest.raises(ValueError, match="inside the model directory"):
      SafetensorsCheckpoint(model)
  (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["w"]}))
  with pytest.raises(ValueError, match="weight_map is not an object"):
    SafetensorsCheckpoint(model)


# -- row 6: llama2.c structure, not first byte -----------------------------------------------------


def _llama2c(path, dim=128, hidden=16, layers=1, heads=2, kv=2, vocab=5, seq=4, seed=0):
  hd = dim // heads
  n = vocab * dim + layers * (2 * dim + dim * dim * 2 + 2 * kv * hd * dim + 3 * hidden * dim)
  n += dim + seq * hd
  w = np.random.default_rng(seed).standard_normal(n).astype("<f4")
  path.write_bytes(struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq) + w.tobytes())
  return w


def test_llama2c_with_dim_128_mod_256_loads_and_pickles_are_refused(tmp_path):
  w = _llama2c(tmp_path / "m.bin", dim=128)
  assert (tmp_path / "m.bin").read_bytes()[0] == 0x80  # looks like a pickle's PROTO opcode
  cfg, arrays = loading.read_llama2c(tmp_path / "m.bin")
  assert cfg.hidden_size == 128 and cfg.vocab_size == 5 and cfg.tie_word_embeddings
  np.testing.assert_array_equal(arrays["embed/embedding"], w[: 5 * 128].reshape(5, 128))
  (tmp_path / "p.bin").write_bytes(pickle.dumps({"model": [1.0] * 50}, protocol=4))
  with pytest.raises(ValueError, match="pickle.*refuses to unpickle"):
    loading.read_llama2c(tmp_path / "p.bin")
  with zipfile.ZipFile(tmp_path / "z.bin", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps([1, 2]))
  with pytest.raises(ValueError, match="pickle"):
    loading.read_llama2c(tmp_path / "z.bin")
  data = (tmp_path / "m.bin").read_bytes()
  (tmp_path / "t.bin").write_bytes(data[:-4])  # truncated: corrupt, not a pickle
  with pytest.raises(ValueError, match=r"the file has \d+ \(truncated") as e:
    loading.read_llama2c(tmp_path / "t.bin")
  assert "pickle" not in str(e.value)


# -- row 14: over-long prompt refused without tokenising ----------------------------------------


def test_overlong_prompt_is_refused_before_tokenising(stories260k):
  import jaxsteer

  lm = jaxsteer.load(stories260k[0], tokenizer=stories260k[1])
  tok, calls = lm.tokenizer, []
  real = tok.encode

  def counting(text, add_bos=True):
    calls.append(len(text))
    return real(text, add_bos=add_bos)

  tok.encode = counting
  try:
    with pytest.raises(ValueError, match="at least .* tokens, longer than the model's context"):
      lm.prepare_batch("Once upon a time " * 1200)  # 20,400 characters
    assert calls == []
    lm.prepare_batch("Once upon a time")  # short prompts are tokenised as before
    assert calls == [16]
  finally:
    del tok.encode


def test_cli_eval_keeps_generations_records_judge_errors_and_resumes(
  serve, monkeypatch, tmp_path, capsys, backend
):
  """Row 4 through ``python -m jaxsteer eval mmhal``: a failing judge loses no generation, its
  errors are recorded per item, and the same command resumes (a fake VLM: no compute)."""
  from PIL import Image

  from jaxsteer._src import cli

  mm = tmp_path / "mmhal"
  (mm / "images").mkdir(parents=True)
  rows = []
  for i in range(2):
    Image.new("RGB", (4, 4), (i * 100, 0, 0)).save(mm / "images" / f"im{i}.png")
    rows.append(
      dict(question_type="attribute", question_topic="t", image_id=f"im{i}", image_src="x",
           image_content=["Cat"], question=f"What is {i}?", gt_answer="A cat.")
    )  # fmt: skip
  (mm / "response_template.json").write_text(json.dumps(rows))

  class FakeVLM:
    encode_multimodal, calls = None, []

    def chat_prompt(self, q):
      return q

    def generate(self, prompt, image=None, max_new_tokens=0):
      self.calls.append(prompt)
      return "A cat."

  vlm = FakeVLM()
  monkeypatch.setattr(cli, "_load_model", lambda args: vlm)
  state = {"status": 500}

  def judge(conn, n, s):
    if state["status"] == 200:
      conn.sendall(reply(200, chat("Rating: 5")))
    else:
      conn.sendall(reply(state["status"], b"overloaded"))

  srv = serve(judge, limit=20)
  out = tmp_path / "report.json"
  argv = ["eval", "mmhal", "--model", "fake", "--data", mm, "--judge", "llm", "--judge-url"]
  argv += [srv.url, "--judge-model", "j", "--judge-retries", "0", "--no-progress"]
  argv = [str(a) for a in [*argv, "--judge-backend", backend]]
  assert cli.main([*argv, "--out", str(out)]) == 0
  cap = capsys.readouterr()
  res = json.loads(cap.out)
  assert "2 judgements failed" in cap.err and "run the same command again" in cap.err
  assert res["judge_errors"] == 2 and res["methods"]["unsteered"]["n"] == 0
  assert len(vlm.calls) == 2
  recs = json.loads(out.read_text())["records"]["unsteered"]
  assert all("HTTP 500: overloaded" in r["error"] for r in recs)
  state["status"] = 200
  assert cli.main([*argv, "--out", str(out)]) == 0
  res = json.loads(capsys.readouterr().out)
  assert len(vlm.calls) == 2  # nothing generated again
  assert res["judge_errors"] == 0 and res["methods"]["unsteered"]["mean_score"] == 5
  state["status"] = 503  # without --out the first failure ends the run: one line, exit 2
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "HTTP 503" in lines[0]


def test_cli_judge_backend_openai_without_the_package_is_one_line(monkeypatch, tmp_path, capsys):
  from jaxsteer._src import cli

  monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed: import openai fails
  argv = ["eval", "mmhal", "--model", "fake", "--data", str(tmp_path), "--judge", "llm"]
  argv += [
    "--judge-url",
    "http://127.0.0.1:9/v1",
    "--judge-model",
    "j",
    "--judge-backend",
    "openai",
  ]
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "--judge-backend" in lines[0] and "pip install" in lines[0]
