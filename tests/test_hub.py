"""Time bounds on the hub (advdistill/hub.py): a hub endpoint that accepts connections and never answers, answers
with headers and then stalls, trickles bytes forever, or never accepts (a full queue: connects hang as with
dropped packets) ends ``prepare`` and a model stage within seconds, in the one line that names the hub id and how to
work offline, exit 2, no traceback.

Every endpoint is a server these tests start on 127.0.0.1 and stop themselves; the stages reach it through
HF_ENDPOINT, with ADVDISTILL_HUB_TIMEOUT=2 (and ADVDISTILL_HUB_DEADLINE=4 for the trickle)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from advdistill import hub
from advdistill.errors import ConfigError, InputError
from tests.helpers import REPO

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BOUND_S = 20  # each run below ends in about 4 to 8 s (imports included); without the bounds it took 6.5 min and more
SERVER_LIFE_S = 120  # a connection handler ends by itself after this, whatever the test does


def _read_request(conn: socket.socket, stop: threading.Event) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if stop.is_set():
            return None
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return None
        data += chunk
    return data


def _handle(conn: socket.socket, kind: str, stop: threading.Event) -> None:
    """One connection: ``silent`` reads nothing and says nothing; ``stall`` and ``trickle`` answer a HEAD with a
    file's metadata, and a GET with its headers, then nothing more (stall) or a byte every 0.2 s (the
    agent registry huggingface_hub fetches for its user agent is not found at once, so that the stage's own
    requests meet the stall)."""
    conn.settimeout(0.2)
    ends = time.monotonic() + SERVER_LIFE_S
    with conn:
        while not stop.is_set() and time.monotonic() < ends:
            if kind == "silent":
                stop.wait(0.2)
                continue
            request = _read_request(conn, stop)
            if request is None:
                return
            if b" /api/agent-harnesses " in request.split(b"\r\n", 1)[0]:  # huggingface_hub's own, best effort
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            if request.startswith(b"HEAD"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"abc\"\r\nX-Repo-Commit: "
                             + COMMIT.encode() + b"\r\n\r\n")
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
            while not stop.is_set() and time.monotonic() < ends:
                stop.wait(0.2)
                if kind == "trickle":
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        return
            return


@contextmanager
def fake_hub(kind: str) -> Iterator[str]:
    """The URL of a misbehaving hub on 127.0.0.1 (see :func:`_handle`; ``backlog`` never accepts, and its queue
    is full, so a connect hangs), served until the block ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    stop = threading.Event()
    fillers: list[socket.socket] = []
    threads: list[threading.Thread] = []
    if kind == "backlog":
        server.listen(0)
        filler = socket.create_connection(server.getsockname(), timeout=2)  # the one place of the queue
        fillers.append(filler)
    else:
        server.listen(16)
        server.settimeout(0.2)

        def serve() -> None:
            ends = time.monotonic() + SERVER_LIFE_S
            while not stop.is_set() and time.monotonic() < ends:
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                thread = threading.Thread(target=_handle, args=(conn, kind, stop), daemon=True)
                thread.start()
                threads.append(thread)

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[0].start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for sock in (*fillers, server):
            sock.close()


def hub_env(endpoint: str, home: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("HF_", "ADVDISTILL_HUB_")) and name.lower() not in ("http_proxy", "https_proxy",
                                                                                        "all_proxy")}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "ADVDISTILL_HUB_TIMEOUT": "2",
            "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "NO_PROXY": "127.0.0.1", **extra}


def run_stage(env: dict[str, str], *argv: object, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "advdistill.cli", *map(str, argv)], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=120)
    return result, time.monotonic() - started


def assert_one_line_error(result: subprocess.CompletedProcess, elapsed: float, start: str, reason: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert elapsed < BOUND_S, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(start), last
    assert reason in last, last
    assert last.endswith(hub.OFFLINE_HINT), last
    assert "local_sources" in last and "HF_HUB_OFFLINE=1" in last


REASONS = {"silent": "sent nothing for 2 s (ADVDISTILL_HUB_TIMEOUT)",
           "stall": "sent nothing for 2 s (ADVDISTILL_HUB_TIMEOUT)",
           "backlog": "sent nothing for 2 s (ADVDISTILL_HUB_TIMEOUT)",
           "trickle": "took more than 4 s in all (ADVDISTILL_HUB_DEADLINE)"}


@pytest.mark.failure_mode(
    "hub endpoint that never answers, stalls after its headers, or never accepts the connection (dropped "
    "packets), HF_HUB_OFFLINE unset (prepare with a hub id)",
    sees="prepare stops after ADVDISTILL_HUB_TIMEOUT seconds of the hub's silence (default 60) with one line naming "
         "the id, the endpoint and how to work offline (local_sources, HF_HUB_OFFLINE=1), exit 2, no traceback",
    kept="everything; nothing is written")
@pytest.mark.parametrize("kind", ["silent", "stall", "backlog"])
def test_prepare_from_a_hub_that_does_not_answer_ends_in_one_line(kind, tmp_path):
    with fake_hub(kind) as endpoint:
        result, elapsed = run_stage(hub_env(endpoint, tmp_path / "hf"), "prepare", "--dataset", "gsm8k", "--source",
                                    "openai/gsm8k", "--split", "test", "--out", tmp_path / "test.parquet",
                                    cwd=tmp_path)
    assert_one_line_error(result, elapsed, "advdistill prepare: error: dataset 'gsm8k': cannot load 'openai/gsm8k' "
                          f"(split 'test') from the hub: the hub ({endpoint}) ", REASONS[kind])
    assert not (tmp_path / "test.parquet").exists()


@pytest.mark.failure_mode(
    "hub endpoint that never answers, never accepts, or trickles bytes forever, HF_HUB_OFFLINE unset (a model "
    "given as a hub id to sample, train or evaluate)",
    sees="the stage stops after ADVDISTILL_HUB_TIMEOUT seconds of the hub's silence (default 60) or "
         "ADVDISTILL_HUB_DEADLINE seconds in all (default 3600), before loading anything, with one line: --model: "
         "cannot load '<id>' from the hub: <why>; how to work offline (local_sources, HF_HUB_OFFLINE=1), exit 2",
    kept="everything; nothing is written")
@pytest.mark.parametrize("kind", ["silent", "backlog", "trickle"])
def test_evaluate_with_a_hub_model_from_a_hub_that_does_not_answer_ends_in_one_line(kind, tmp_path, rows_file):
    out = tmp_path / "out"
    with fake_hub(kind) as endpoint:
        result, elapsed = run_stage(hub_env(endpoint, tmp_path / "hf", ADVDISTILL_HUB_DEADLINE="4"), "evaluate",
                                    "--model", "Qwen/Qwen2.5-1.5B", "--rows", rows_file, "--out",
                                    out / "responses.parquet", "--metrics", out / "metrics.json", cwd=tmp_path)
    assert_one_line_error(result, elapsed, "advdistill evaluate: error: --model: cannot load 'Qwen/Qwen2.5-1.5B' "
                          f"from the hub: the hub ({endpoint}) ", REASONS[kind])
    assert not [path for path in out.rglob("*") if path.is_file()]  # the stage may have made the folder


def test_bounds_are_positive_seconds_from_the_environment(monkeypatch):
    monkeypatch.delenv(hub.TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(hub.DEADLINE_ENV, raising=False)
    assert hub.hub_limits() == (60.0, 3600.0)
    monkeypatch.setenv(hub.TIMEOUT_ENV, "2.5")
    monkeypatch.setenv(hub.DEADLINE_ENV, "30")
    assert hub.hub_limits() == (2.5, 30.0)
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(hub.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=rf"^ADVDISTILL_HUB_TIMEOUT='{bad}': expected a positive number of "
                                              "seconds$"):
            hub.hub_limits()


def test_a_model_is_fetched_as_its_config_tokenizer_and_safetensors_weights():
    names = [".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
             "vocab.json", "onnx/model.onnx", "onnx/config.json", "chat_template.jinja"]
    assert hub.model_files(names) == [
        "chat_template.jinja", "config.json", "generation_config.json", "merges.txt",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    assert hub.model_files(["config.json", "pytorch_model.bin", "tokenizer.json"]) == [
        "config.json", "pytorch_model.bin", "tokenizer.json"]


def _cache_with(tmp_path: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face hub cache holding ``model_dir`` as the snapshot of ``repo_id``'s main branch."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    return repo / "snapshots" / COMMIT


def _hub_at(monkeypatch, endpoint: str, cache: Path, offline: bool) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv(hub.TIMEOUT_ENV, "1")


@pytest.mark.failure_mode(
    "hub endpoint that does not answer while the model given as a hub id is in the Hugging Face cache",
    sees="a warning naming the id, why and the cached folder after ADVDISTILL_HUB_TIMEOUT seconds; the stage loads "
         "the cached copy",
    kept="the cached copy, unchanged")
def test_a_silent_hub_falls_back_to_the_cached_copy_of_a_model(tmp_path, tiny_model_dir, monkeypatch, caplog):
    snapshot = _cache_with(tmp_path, "owner/tiny", tiny_model_dir)
    with fake_hub("silent") as endpoint:
        _hub_at(monkeypatch, endpoint, tmp_path / "hub", offline=False)
        started = time.monotonic()
        assert hub.local_model("owner/tiny", "advdistill evaluate") == str(snapshot)
    assert time.monotonic() - started < BOUND_S
    assert "cannot reach the hub for 'owner/tiny' (the hub" in caplog.text
    assert "sent nothing for 1 s" in caplog.text


@pytest.mark.failure_mode(
    "HF_HUB_OFFLINE=1 and a model given as a hub id that is not in the Hugging Face cache (sample, train, evaluate)",
    sees="one line: --model: '<id>' is not in the Hugging Face cache (<folder>) and HF_HUB_OFFLINE=1 forbids "
         "downloading it, with the way out (a local folder, local_sources), exit 2, no traceback",
    kept="everything; nothing is loaded or written")
def test_offline_a_model_comes_from_the_cache_or_stops_in_one_line(tmp_path, tiny_model_dir, monkeypatch):
    snapshot = _cache_with(tmp_path, "owner/tiny", tiny_model_dir)
    _hub_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "hub", offline=True)
    assert hub.local_model("owner/tiny", "advdistill sample") == str(snapshot)
    with pytest.raises(InputError, match=r"^--model: 'owner/absent' is not in the Hugging Face cache \(.*\) and "
                                         r"HF_HUB_OFFLINE=1 forbids downloading it; .*local_sources"):
        hub.local_model("owner/absent", "advdistill sample")
    assert hub.local_model(str(tiny_model_dir), "advdistill sample") == str(tiny_model_dir)


@contextmanager
def working_hub(repo_id: str, model_dir: Path) -> Iterator[str]:
    """A hub on 127.0.0.1 that serves ``model_dir`` as ``repo_id`` (its metadata, and each file's HEAD and GET),
    with a README.md and an ONNX copy beside, which a stage does not need."""
    files = {path.name: path.read_bytes() for path in model_dir.iterdir() if path.is_file()}
    files |= {"README.md": b"# tiny", "onnx/model.onnx": b"onnx"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            prefix = f"/{repo_id}/resolve/main/"
            if self.path.split("?")[0] == f"/api/models/{repo_id}":
                data = json.dumps({"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]})
                content = data.encode()
                headers = {"Content-Type": "application/json"}
            elif self.path.startswith(prefix) and self.path[len(prefix):] in files:
                content = files[self.path[len(prefix):]]
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
            else:
                content, headers = b"", {}
                self.send_response(404)
            if headers:
                self.send_response(200)
            for name, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(content)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_hub_model_is_downloaded_within_the_bounds_and_loaded_from_its_snapshot(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    with working_hub("owner/tiny", tiny_model_dir) as endpoint:
        _hub_at(monkeypatch, endpoint, tmp_path / "hub", offline=False)
        folder = Path(hub.local_model("owner/tiny", "advdistill sample"))
    assert folder.parent.name == "snapshots" and folder.name == COMMIT
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    assert (folder / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert try_to_load_from_cache("owner/tiny", "config.json") == str(folder / "config.json")  # the manifests find it


def test_a_stage_stuck_where_the_bound_cannot_reach_it_is_ended_with_the_same_line(tmp_path):
    """The main thread ignores the bound's signal (as a native download would not return to Python): GRACE
    seconds later the process prints the stage's line itself and exits 2."""
    code = ("import signal, time\nfrom advdistill import hub\n"
            "with hub.hub_calls('advdistill prepare', lambda reason: 'dataset x: ' + reason):\n"
            "    signal.pthread_sigmask(signal.SIG_BLOCK, {hub.SIGNAL})\n"
            "    time.sleep(60)\n")
    env = hub_env("http://127.0.0.1:9", tmp_path / "hf", ADVDISTILL_HUB_DEADLINE="1")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "advdistill prepare: error: dataset x: the hub (http://127.0.0.1:9) took more than 1 s in all "
        "(ADVDISTILL_HUB_DEADLINE)")
    assert 1 + hub.GRACE <= elapsed < 1 + hub.GRACE + BOUND_S
