"""The one Ray start policy (:mod:`common.ray_init`): an address where nothing answers is one line,
at once, before ``ray.init`` (which retries such an address for many minutes)."""

from __future__ import annotations

import socket
import time

import pytest

from common.ray_init import RayConnectError, _check_reachable, _first_line, ray_session


def _closed_port() -> int:
    """A local TCP port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_answers_fails_at_once():
    port = _closed_port()
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"nothing answers at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=f"nothing answers at 127.0.0.1:{port}"):
        _check_reachable(f"ray://127.0.0.1:{port}")
    assert time.perf_counter() - t < 5.0


def test_a_listening_address_and_symbolic_addresses_pass():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    _check_reachable("auto")  # resolved by Ray itself
    _check_reachable("local")


def test_ray_session_names_the_address_in_one_line_and_starts_nothing(monkeypatch):
    import ray

    started = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(a))
    port = _closed_port()
    with pytest.raises(RayConnectError) as info, ray_session(f"127.0.0.1:{port}"):
        pass
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"cannot start or join the Ray cluster at 127.0.0.1:{port}: ")
    assert started == []


def test_ray_session_turns_a_failing_init_into_one_line(monkeypatch):
    import ray

    def fail(*args, **kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at h:1\nTraceback (most recent call last):\n  ...")

    monkeypatch.setattr(ray, "init", fail)
    with pytest.raises(RayConnectError, match=r"^cannot start or join a local Ray: ConnectionError: Failed to "
                                              r"connect to Ray cluster at h:1$"), ray_session(None):
        pass
    assert _first_line(ValueError("x" * 300)).endswith("...") and len(_first_line(ValueError("x" * 300))) < 220
    try:
        try:
            raise PermissionError("InvalidAuthToken: token missing\nmore")
        except PermissionError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at h:1") from cause
    except ConnectionError as e:
        assert _first_line(e) == ("ConnectionError: Failed to connect to Ray cluster at h:1 "
                                  "(PermissionError: InvalidAuthToken: token missing)")
