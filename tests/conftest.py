from __future__ import annotations

import pytest

from tests.shared import MOBILENET_WEIGHTS, asset, shared_root


@pytest.fixture(scope="session")
def shared():
    return shared_root()


@pytest.fixture(scope="session")
def mobilenet_weights():
    return asset(MOBILENET_WEIGHTS)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()
