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
def detector_factory(mobilenet_weights):
    """Zero-argument factory of the reference CPU detector (what Ray actors and workers call)."""
    from detector.spec import DetectorSpec

    return DetectorSpec(weights=str(mobilenet_weights), runtime="torch").build


@pytest.fixture(scope="session")
def detector(detector_factory):
    """The reference MobileNet-0.25 RetinaFace on CPU, loaded once per session."""
    return detector_factory()

