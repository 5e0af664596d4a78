"""The two test tiers: the unit tier's guard works, and every test file belongs to a tier (the ones
``scripts/test.sh`` runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.shared import REPO_ROOT


def test_ray_and_subprocesses_are_refused_in_the_unit_tier():
    import ray

    with pytest.raises(RuntimeError, match="move this test to tests/integration"):
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match="move this test to tests/integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(RuntimeError, match="move this test to tests/integration"):
        subprocess.check_output(["true"])


def test_every_test_file_is_in_a_tier():
    tests = REPO_ROOT / "tests"
    outside = sorted(str(p.relative_to(tests)) for p in tests.rglob("test_*.py")
                     if p.parent not in (tests / "unit", tests / "integration"))
    assert outside == [], f"test files outside tests/unit and tests/integration (scripts/test.sh skips them): {outside}"
    unit = {p.name for p in (tests / "unit").glob("test_*.py")}
    integration = {p.name for p in (tests / "integration").glob("test_*.py")}
    assert len(unit) > 20 and len(integration) > 10
    for tier in ("unit", "integration"):
        assert (tests / tier / "__init__.py").is_file()  # packages: same basenames in both tiers do not collide
