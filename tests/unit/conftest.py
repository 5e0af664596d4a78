"""The unit tier's rule, enforced: a unit test that starts Ray or a subprocess fails with a message
saying where it belongs (tests/integration)."""

from __future__ import annotations

import subprocess

import pytest

TIER_RULE = "the unit tier runs no Ray and no subprocess: move this test to tests/integration"


def _refuse(*args, **kwargs):
    raise RuntimeError(TIER_RULE)


@pytest.fixture(scope="package", autouse=True)
def no_ray_and_no_subprocess():
    """For every test (and fixture below session scope) in tests/unit: ``ray.init`` and
    ``subprocess.Popen`` (which ``subprocess.run`` and ``check_output`` use) raise."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", _refuse)
        patch.setattr(subprocess.Popen, "__init__", _refuse)
        yield
