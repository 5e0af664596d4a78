"""Trust at scale: the align job refuses bad weights and an unreadable source before any work, keeps
Ray's own noise off the console, and survives losing a node of a real two-node Ray cluster."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.shared import asset

# ------------------------------------------------------------------------ bad weights, caught early


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory, mobilenet_weights) -> dict[str, tuple[Path, list[str], str, str]]:
    """name -> (file, extra flags, what the job's one error line says, what the detect command's says)."""
    import torch

    from detector.config import get_preset
    from detector.model import RetinaFace

    root = tmp_path_factory.mktemp("bad_weights")
    text = root / "notes.pth"
    text.write_text("these are not weights\n")
    data = mobilenet_weights.read_bytes()
    truncated = root / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])  # an interrupted download
    resnet = root / "resnet50.pth"
    torch.manual_seed(0)
    torch.save(RetinaFace(get_preset("resnet50")).state_dict(), resnet)  # biubug6 key layout, another backbone
    wrong_preset = ("weights do not fit the 'mobilenet0.25' model (mobilenet0.25 backbone); the file looks like a "
                    "resnet50 RetinaFace: pass --preset resnet50 or leave the preset unset")
    return {
        "text": (text, [], "not a torch checkpoint or ONNX file", "not a readable torch checkpoint (22 bytes; neither"),
        "truncated": (truncated, [], *["not a readable torch checkpoint (894867 bytes; possibly truncated"] * 2),
        "resnet50-as-mobilenet": (resnet, ["--preset", "mobilenet0.25"], wrong_preset, wrong_preset),
    }


@pytest.mark.parametrize("case", ["text", "truncated", "resnet50-as-mobilenet"])
def test_bad_weights_in_the_detect_command_are_one_line(case, bad_weights, tmp_path, capfd):
    from detector.cli import main

    weights, flags, _, problem = bad_weights[case]
    out_dir = tmp_path / "det"
    code = main(["detect", str(asset("images/aligned112_insightface_tom_hanks.png")), "--weights", str(weights),
                 *flags, "--out", str(out_dir)])
    _, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert str(weights) in lines[0] and problem in lines[0], lines[0]
    assert not out_dir.exists()


# ------------------------------------------------------------------------ the driver's watchdog


def test_the_watchdog_stops_a_run_stalled_by_a_lost_node_and_only_then():
    from pipeline.job.nodes import NodeLostError, watch_progress

    release = threading.Event()

    def stalled():
        yield 1
        yield 2
        release.wait(30)  # Ray waiting for work that will never come back
        yield 3

    alive = [{"head", "second"}]
    got, t0 = [], time.monotonic()
    with pytest.raises(NodeLostError, match="lost Ray node.*second.*rerun the same command to resume"):
        for item in watch_progress(stalled(), stall_s=0.5, poll_s=0.05, nodes=lambda: alive[0],
                                   abandon=lambda: None):
            got.append(item)
            if item == 2:
                alive[0] = {"head"}
    assert got == [1, 2] and 0.5 <= time.monotonic() - t0 < 10
    release.set()

    def slow():  # no node lost: a slow iteration is waited for, however long
        for i in range(3):
            time.sleep(0.3)
            yield i

    assert list(watch_progress(slow(), stall_s=0.1, poll_s=0.02, nodes=lambda: {"head"})) == [0, 1, 2]

    def broken():
        yield 1
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        list(watch_progress(broken(), stall_s=1, poll_s=0.02, nodes=lambda: {"head"}))
