"""Time bounds on every call the stages make to the Hugging Face hub, and the model folder a stage loads a hub id from.

Without bounds, a hub endpoint that accepts connections and never answers held ``prepare`` (``datasets``) 6.5
minutes before its error, and a model stage (``transformers``) as long for each file: ``huggingface_hub`` waits 10 s
for a file's metadata, then retries it five times with 60 s each; some calls (a repository's metadata) have no
timeout at all, and a server that trickles bytes holds a download forever. Two environment variables bound that
instead; being variables, they reach every job (a Snakemake rule, a SLURM job, an Apptainer container) without a
config key (docs/hub.md):

``ADVDISTILL_HUB_TIMEOUT`` (seconds, default 60)
    the longest the hub may stay silent while a stage waits on it: connecting, waiting for an answer, or for the
    next bytes of one, counted across the retries ``huggingface_hub`` makes after a failed request, and over the
    requests that set no timeout of their own. It also caps the per-request timeouts (``HF_HUB_ETAG_TIMEOUT``,
    ``HF_HUB_DOWNLOAD_TIMEOUT``, the metadata retries' 60 s) and is the client's default timeout.
``ADVDISTILL_HUB_DEADLINE`` (seconds, default 3600)
    the longest one stage's hub work may take in all (metadata and downloads of a dataset, or of a model's files),
    even while the hub keeps sending: a server that trickles bytes forever ends here. A model of 15 GB needs it
    raised on a link slower than about 5 MB/s.

A bound that is hit raises :class:`HubTimeout` in the stage's main thread, which the stage turns into its usual one
line naming the hub id and how to work offline. Should the stage not unwind within :data:`GRACE` seconds (its
thread stuck in code that does not return to Python, e.g. a hf_xet download), the process prints that line itself
and exits with status 2, as the CLI would have.

The silence is measured on ``huggingface_hub``'s own HTTP client (``set_client_factory``), which ``datasets`` and
``transformers`` use for every hub call: time spent between requests (parsing, building Arrow files, a hf_xet
download) is no silence, only the time a request waits on the hub.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advdistill.errors import ConfigError, InputError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "ADVDISTILL_HUB_TIMEOUT"
DEADLINE_ENV = "ADVDISTILL_HUB_DEADLINE"
DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 3600.0
GRACE = 5.0
"""Seconds a stage gets to unwind after a bound is hit before the process ends itself (exit 2)."""
POLL = 0.1
RETRY_GAP = 10.0
"""A request that starts within this many seconds of a failed one is a retry (``huggingface_hub`` backs off up to
8 s): the silence goes on counting from the hub's last answer instead of starting afresh."""
SIGNAL = signal.SIGALRM
OFFLINE_HINT = ("to work without the hub, give a local copy instead (in a workflow config: local_sources maps the "
                "hub id to it), or set HF_HUB_OFFLINE=1 to use the copy already in the Hugging Face cache")
MODEL_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
"""Files of a hub model a stage needs besides its weights: config, generation config, tokenizer, chat template."""


class HubTimeout(BaseException):
    """A hub bound was hit; a BaseException, so that the libraries' ``except Exception`` (retries, cache fallbacks)
    let it through to the stage. The message is the reason, e.g. 'the hub (URL) sent nothing for 60 s (...)'."""


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def hub_limits() -> tuple[float, float]:
    """(silence timeout, overall deadline) in seconds, from the environment."""
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT), _seconds(DEADLINE_ENV, DEFAULT_DEADLINE)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class _Traffic:
    """When the hub last sent something, and whether a request is waiting on it now (all threads together)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0
        self.heard = time.monotonic()
        self.failed_at: float | None = None

    def reset(self) -> None:
        with self.lock:
            self.heard, self.failed_at = time.monotonic(), None

    def wait_begins(self, what: str) -> None:
        """A ``request`` waits for its answer, or a response for its ``first`` or ``next`` bytes. A request that is no
        retry of a failed one starts the clock afresh, and so do the next bytes (the time the reader spent on the
        previous ones is no silence); the first bytes wait on the clock of their request."""
        with self.lock:
            now = time.monotonic()
            if what == "next" or (what == "request" and self.waiting == 0
                                  and (self.failed_at is None or now - self.failed_at > RETRY_GAP)):
                self.heard = now
            self.waiting += 1

    def wait_ends(self) -> None:
        with self.lock:
            self.waiting -= 1

    def answered(self, headers: bool = False) -> None:
        """Data came; the headers that answer a retry do not stop the clock, only the data that follows them (a
        hub that answers every retry and then stalls stays silent)."""
        with self.lock:
            now = time.monotonic()
            if headers and self.failed_at is not None and now - self.failed_at <= RETRY_GAP:
                self.failed_at = None
            else:
                self.heard, self.failed_at = now, None

    def failed(self) -> None:
        with self.lock:
            self.failed_at = time.monotonic()

    def silence(self) -> float:
        with self.lock:
            return time.monotonic() - self.heard if self.waiting else 0.0


_TRAFFIC = _Traffic()


@functools.cache
def _watched_transport_class() -> type:
    """An httpx2 transport around another that tells :data:`_TRAFFIC` when requests wait and data comes."""
    import httpx2

    class WatchedStream(httpx2.SyncByteStream):
        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def __iter__(self) -> Iterator[bytes]:
            chunks = iter(self._stream)
            what = "first"
            while True:
                _TRAFFIC.wait_begins(what)
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except Exception:
                    _TRAFFIC.failed()
                    raise
                finally:
                    _TRAFFIC.wait_ends()
                _TRAFFIC.answered()
                what = "next"
                yield chunk

        def close(self) -> None:
            self._stream.close()

    class WatchedTransport(httpx2.BaseTransport):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            _TRAFFIC.wait_begins("request")
            try:
                response = self._inner.handle_request(request)
            except Exception:
                _TRAFFIC.failed()
                raise
            finally:
                _TRAFFIC.wait_ends()
            _TRAFFIC.answered(headers=True)
            response.stream = WatchedStream(response.stream)
            return response

        def close(self) -> None:
            self._inner.close()

    return WatchedTransport


_INSTALLED = False


def _install_watch() -> None:
    """Route ``huggingface_hub``'s shared client (and every later one) through the watched transport, once."""
    global _INSTALLED
    if _INSTALLED:
        return
    from huggingface_hub.utils import _http

    inner_factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory() -> Any:
        client = inner_factory()
        choose = getattr(client, "_transport_for_url", None)
        if choose is None:  # another httpx2: the deadline and the per-request timeouts still hold
            log.debug("hub: httpx2.Client has no _transport_for_url; the hub's silence is not watched")
            return client
        watched = _watched_transport_class()
        client._transport_for_url = lambda url: watched(choose(url))
        return client

    _http.set_client_factory(factory)
    _INSTALLED = True


@contextmanager
def _request_timeouts(timeout: float) -> Iterator[None]:
    """``huggingface_hub``'s per-request timeouts capped at ``timeout``, and ``timeout`` the shared client's default
    (for the calls that leave theirs to the client; an explicit ``timeout=None`` is left to the silence bound)."""
    import httpx2
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import get_session

    knobs = ((constants, "HF_HUB_ETAG_TIMEOUT"), (constants, "HF_HUB_DOWNLOAD_TIMEOUT"),
             (file_download, "_ETAG_RETRY_TIMEOUT"))
    saved = {(module, name): getattr(module, name) for module, name in knobs if hasattr(module, name)}
    session = get_session()
    session_timeout = session.timeout
    for (module, name), value in saved.items():
        setattr(module, name, min(value, timeout) if isinstance(value, (int, float)) else timeout)
    session.timeout = httpx2.Timeout(timeout)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        session.timeout = session_timeout


class _Bounds:
    """A watchdog thread over one stage's hub work: it signals the main thread when a bound is hit, and ends the
    process if the stage has not unwound :data:`GRACE` seconds later."""

    def __init__(self, timeout: float, deadline: float, endpoint: str, program: str,
                 describe: Callable[[str], str]) -> None:
        self.timeout, self.deadline, self.endpoint = timeout, deadline, endpoint
        self.program, self.describe = program, describe
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.closing = False
        self.reason: str | None = None
        self.raised = False
        self.main_ident = threading.main_thread().ident
        self.signals = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill")
        self.previous: Any = None
        self.thread = threading.Thread(target=self._watch, name="advdistill-hub-bounds", daemon=True)

    def start(self) -> None:
        if self.signals:
            self.previous = signal.signal(SIGNAL, self._handler)
        self.thread.start()

    def stop(self) -> None:
        self.closing = True
        with self.lock:
            self.finished.set()
        if self.signals:
            signal.signal(SIGNAL, self.previous if self.previous is not None else signal.SIG_DFL)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.reason is not None:  # ours; once, and not while the block ends anyway
            if not self.raised and not self.closing:
                self.raised = True
                raise HubTimeout(self.reason)
        elif callable(self.previous):  # someone else's alarm (pytest-timeout, ...)
            self.previous(signum, frame)

    def _overdue(self) -> str | None:
        if time.monotonic() - self.started > self.deadline:
            return f"the hub ({self.endpoint}) took more than {self.deadline:g} s in all ({DEADLINE_ENV})"
        if _TRAFFIC.silence() > self.timeout:
            return f"the hub ({self.endpoint}) sent nothing for {self.timeout:g} s ({TIMEOUT_ENV})"
        return None

    def _watch(self) -> None:
        while not self.finished.wait(POLL):
            reason = self._overdue()
            if reason is not None:
                break
        else:
            return
        with self.lock:
            if self.finished.is_set():
                return
            self.reason = reason
            if self.signals:
                signal.pthread_kill(self.main_ident, SIGNAL)
        if self.finished.wait(GRACE):
            return
        try:  # the stage is stuck where no exception reaches it: end the process the way the CLI would have
            os.write(2, f"{self.program}: error: {self.describe(reason)}\n".encode())
        finally:
            os._exit(2)


@contextmanager
def hub_calls(program: str, describe: Callable[[str], str]) -> Iterator[None]:
    """Bound every hub call made inside (see the module's docstring). A bound that is hit raises
    :class:`HubTimeout`; ``describe(reason)`` is the stage's error line for it, which the process prints itself
    (``<program>: error: ...``, exit 2) if the stage does not unwind."""
    from huggingface_hub import constants

    timeout, deadline = hub_limits()
    _install_watch()
    _TRAFFIC.reset()
    bounds = _Bounds(timeout, deadline, constants.ENDPOINT, program, describe)
    with _request_timeouts(timeout):
        bounds.start()
        try:
            yield
        finally:
            bounds.stop()


def model_files(names: Sequence[str]) -> list[str]:
    """The files of a hub model's top level that a stage loads: config, tokenizer and chat template files, and the
    safetensors weights (the ``pytorch_model*.bin`` ones only where there are none)."""
    top = [name for name in names if "/" not in name]
    safetensors = [name for name in top if name.endswith(".safetensors") or name == "model.safetensors.index.json"]
    pickled = [name for name in top if name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json"))]
    weights = safetensors if any(name.endswith(".safetensors") for name in safetensors) else pickled
    others = [name for name in top if name.endswith(MODEL_SUFFIXES) and name not in safetensors + pickled]
    return sorted(set(others + weights))


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or a cache it cannot read
        return None


def _download_model(repo_id: str, option: str, timeout: float) -> Path:
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo_id, timeout=timeout)
    names = model_files([sibling.rfilename for sibling in info.siblings or ()])
    if "config.json" not in names:
        raise InputError(f"{option}: '{repo_id}' on the hub has no config.json at its top level: not a model the "
                         "stages can load")
    paths = [hf_hub_download(repo_id, name) for name in names]  # one after the other, in this (main) thread
    return Path(paths[0]).parent


def _connection_problem(err: BaseException) -> bool:
    """The hub did not answer (a bound, a refused or broken connection, a 5xx), as opposed to refusing the id."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, (HubTimeout, httpx2.TransportError)):
        return True
    response = getattr(err, "response", None)
    return isinstance(err, HfHubHTTPError) and response is not None and response.status_code >= 500


def local_model(source: str, program: str, option: str = "--model") -> str:
    """The folder a stage loads ``source`` from: ``source`` itself unless it is a hub id with no such folder here;
    for a hub id, its snapshot in the Hugging Face cache, whose files (:func:`model_files`) are downloaded first
    within the bounds, unless HF_HUB_OFFLINE=1. A hub that does not answer falls back to a usable copy in the cache
    (with a warning); without one the stage stops with one line naming the id and how to work offline."""
    from advdistill.model_folders import HUB_ID, model_folder_problem

    if Path(source).exists() or not HUB_ID.match(source):
        return source
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        folder = _cached_snapshot(source)
        if folder is None:
            raise InputError(f"{option}: '{source}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                             "HF_HUB_OFFLINE=1 forbids downloading it; give a local model folder instead (in a "
                             "workflow config: local_sources maps the hub id to it)")
    else:
        def describe(reason: str) -> str:
            return f"{option}: cannot load '{source}' from the hub: {reason}; {OFFLINE_HINT}"

        timeout, _ = hub_limits()
        try:
            with hub_calls(program, describe):
                folder = _download_model(source, option, timeout)
        except InputError:
            raise
        except (Exception, HubTimeout) as err:  # huggingface_hub raises many types for an unreachable or missing id
            reason = str(err) if isinstance(err, HubTimeout) else f"{type(err).__name__}: {first_line(err)}"
            cached = _cached_snapshot(source) if _connection_problem(err) else None
            if cached is None or model_folder_problem(cached):
                raise InputError(describe(reason)) from None
            log.warning("%s: cannot reach the hub for '%s' (%s); loading its copy in the Hugging Face cache, %s",
                        option, source, reason, cached)
            folder = cached
    problem = model_folder_problem(folder)
    if problem:
        raise InputError(f"{option}: '{source}' (in the Hugging Face cache: {folder}) {problem}")
    return str(folder)
