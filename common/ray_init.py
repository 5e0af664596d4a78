"""The one Ray start policy of every job (align, verification, training).

:func:`ray_session` joins the Ray already initialised in this process; else the cluster at
``address`` (or ``$RAY_ADDRESS``), shipping the project's packages to its workers; else starts a
local Ray. It shuts down only what it started. By default Ray's own console noise (its internal
warnings, progress-bar notices, log lines of the workers) stays in Ray's session folder, and
real failures still reach the caller as exceptions; ``verbose=True`` shows everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RayConnectError", "finish_shutdown", "project_runtime_env", "ray_session"]

_shutdown: threading.Thread | None = None
"""A Ray shutdown still running in the background (see ``ray_session(background_shutdown=True)``)."""


class RayConnectError(ConnectionError):
    """Ray could not be started or joined (an unreachable or unauthorised ``address``): one line,
    naming the address, for the command to print."""


def finish_shutdown() -> None:
    """Wait for a background Ray shutdown, if one is running (every new session does this first)."""
    global _shutdown
    if _shutdown is not None:
        _shutdown.join()
        _shutdown = None

def project_runtime_env() -> dict[str, Any]:
    """``runtime_env`` shipping ``common``, ``detector`` and ``pipeline`` to a remote cluster's workers."""
    import common
    import detector
    import pipeline

    dirs = [p for pkg in (common, detector, pipeline) for p in pkg.__path__ if Path(p).is_dir()]
    return {"py_modules": dirs}


# What Ray's C++ core writes straight to this process's stderr while ray.init starts it, and what
# the console is spared of: the notice that RAY_BACKEND_LOG_LEVEL was read (ray_session sets it to
# keep the core's own warnings, e.g. about actor restarts, off the console). The core logs it before
# its loggers are set up, so neither that level nor ray.init's logging options reach it.
_KNOWN_NOTICES = ("Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL",)


@contextlib.contextmanager
def _without_known_notices() -> Iterator[None]:
    """Route file descriptor 2 to a temporary file for the block, then write back to the real
    stderr every line except :data:`_KNOWN_NOTICES` (anything unexpected still shows). When the
    block fails, nothing is written back: the caller reports the failure in one line (Ray's core
    logs a warning per second while it retries an unreachable cluster)."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = [] if failed else captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(notice in line for notice in _KNOWN_NOTICES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address must accept a TCP connection within
    ``timeout_s``: ``ray.init`` retries an address where nothing listens for many minutes."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:  # "auto" and other forms: Ray resolves them
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {target} ({e.strerror or e})") from e


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The error's type and the first line of its message (Ray's carry whole tracebacks), and the
    same of its root cause when there is one (e.g. the authentication error under Ray's "Failed to
    connect")."""

    def one(e: BaseException) -> str:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        text = lines[0] if lines else ""
        text = text if len(text) <= limit else text[:limit - 3] + "..."
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    root = error
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return one(error) if root is error else f"{one(error)} ({one(root)})"


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False,
                log_to_driver: bool | None = None, background_shutdown: bool = False) -> Iterator[bool]:
    """Make sure Ray is up for the ``with`` block; yields whether this call started it.

    Args:
        address: a cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None``:
            ``$RAY_ADDRESS`` if set, else a new local Ray.
        num_cpus: CPUs of a new local Ray (``None``: every core); ignored when joining a cluster.
        verbose: show Ray's own warnings and log lines on the console.
        log_to_driver: stream the workers' output to this console (default: ``verbose``).
        background_shutdown: shut a Ray this call started down in a thread, so that the caller's
            work after the block (writing its summary and report) overlaps it (~1.3 s for a local
            Ray); the next :func:`ray_session`, :func:`finish_shutdown` or the interpreter's exit
            waits for it.
    """
    finish_shutdown()
    if not verbose:  # the C++ core's log lines (e.g. its warning about actor restarts) stay in Ray's logs
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=False,
                                  log_to_driver=verbose if log_to_driver is None else log_to_driver,
                                  logging_level=logging.INFO if verbose else logging.ERROR)
    if address:
        kwargs["runtime_env"] = project_runtime_env()
    elif num_cpus is not None:
        kwargs["num_cpus"] = int(num_cpus)
    with warnings.catch_warnings(), (contextlib.nullcontext() if verbose else _without_known_notices()):
        if not verbose:
            warnings.simplefilter("ignore")
        # "local": a new local Ray even when a `ray start` cluster runs on this machine (ray.init()
        # without an address would join that one)
        try:
            if address:
                _check_reachable(address)
            ray.init(address=address or "local", **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RayConnectError(f"cannot start or join {where}: {_first_line(e)}") from e
    try:
        if not verbose:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            for name in ("ray", "ray.data", "ray.train", "ray.tune"):
                logging.getLogger(name).setLevel(logging.ERROR)
        yield True
    finally:
        if background_shutdown:
            global _shutdown
            _shutdown = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            _shutdown.start()
        else:
            ray.shutdown()
