"""Fixtures of the integration tier: the session's Ray, and the fixtures its files share with their
unit-tier namesakes (defined there, registered here too)."""

from __future__ import annotations

import pytest

from tests.unit.test_curation_landmarks import given_tree  # noqa: F401
from tests.unit.test_gpu_layout import small_tree  # noqa: F401
from tests.unit.test_job_trust import bad_weights  # noqa: F401
from tests.unit.test_onnx_runtime import exported_onnx  # noqa: F401
from tests.unit.test_widerface_eval import expected_ap, gt, seed1_dir  # noqa: F401


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    import ray

    from common.ray_init import finish_shutdown

    finish_shutdown()  # a job's Ray still shutting down in the background would take this one with it
    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster that a test (or a user) runs on this machine
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


