"""Trust at scale: the align job refuses bad weights and an unreadable source before any work, keeps
Ray's own noise off the console, and survives losing a node of a real two-node Ray cluster."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.job import EXIT_FILES_FAILED, EXIT_USAGE
from pipeline.job.config import EXIT_NODE_LOST
from tests.shared import asset, shared_root

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _align_main():
    """``main`` of ``jobs/align_dataset.py`` (a script, not a package module)."""
    return runpy.run_path(str(REPO / "jobs" / "align_dataset.py"), run_name="align_dataset")["main"]


@pytest.mark.parametrize("case", ["text", "truncated", "resnet50-as-mobilenet"])
def test_bad_weights_stop_the_job_with_one_line_and_nothing_written(case, bad_weights, tmp_path, capfd):
    weights, flags, problem, _ = bad_weights[case]
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    (src / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), src / "p" / "a.png")
    code = _align_main()(["--src", str(src), "--dst", str(dst), "--weights", str(weights), *flags, "--no-progress"])
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, err
    assert len(lines) == 1 and lines[0].startswith("error: detector not usable: "), err
    assert str(weights) in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert not dst.exists()  # no manifest, no lock, no job.json: Ray never started


def test_weights_that_built_once_are_not_built_again(tmp_path, monkeypatch, mobilenet_weights):
    """The driver-side build runs in a child process once per weights content and settings; a
    rerun only hashes the file. A different file (same name) is built again."""
    from detector import probe
    from detector.spec import DetectorSpec

    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path / "cache"))
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch").check(load=True)
    markers = list((tmp_path / "cache" / "checked").iterdir())
    assert len(markers) == 1 and markers[0].name.startswith(Path(mobilenet_weights).stem)

    def no_child(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(probe.subprocess, "run", no_child)
    probe.check_build(spec)  # remembered: no child
    copy = tmp_path / Path(mobilenet_weights).name
    copy.write_bytes(mobilenet_weights.read_bytes()[:-1000])  # same name, other content
    with pytest.raises(AssertionError, match="built again"):
        DetectorSpec(weights=str(copy), runtime="torch").check(load=True)


# ------------------------------------------------------------------------ without root's bypass

# The suite runs as root, and root reads files whatever their mode. The job runs here as root
# without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, dropped from the inheritable and bounding sets so
# that no descendant (the probe, Ray's workers) gets them back: the kernel then applies the file
# modes as for any user. (Switching to 'nobody' does not work on this machine: the virtualenv's
# interpreter lives under /root, which only root may enter.)
_NO_BYPASS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
              "--bounding-set=-dac_override,-dac_read_search"]


def _without_root_bypass(args: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python jobs/align_dataset.py ARGS`` in ``cwd`` with file permissions enforced, and a
    plain environment (no ``RAY_*``/``FACEPREP_*`` but ``FACEPREP_WEIGHTS``, as in the README)."""
    if os.geteuid() != 0:
        pytest.fail("the permission tests expect root (as CI runs the suite), so that they can drop its bypass")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FACEPREP_"))}
    env["FACEPREP_WEIGHTS"] = str(shared_root() / "assets" / "weights")
    return subprocess.run([*_NO_BYPASS, PYTHON, str(REPO / "jobs" / "align_dataset.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_an_unreadable_source_folder_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "raw" / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), tmp_path / "raw" / "p" / "a.png")
    os.chmod(tmp_path / "raw", 0)
    try:
        out = _without_root_bypass(["--src", "raw", "--dst", "aligned"], cwd=tmp_path, timeout=120)
    finally:
        os.chmod(tmp_path / "raw", 0o755)  # let pytest clean up
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == EXIT_USAGE, out.stderr
    assert lines == ["error: source folder raw is not readable (permission denied)"], out.stderr
    assert not (tmp_path / "aligned").exists()


# Ray's own console lines: glog/spdlog prefixes ("[2026-01-01 10:00:00,123 E 123 456] core_worker.cc:..."
# or "E0101 10:00:00.123"), worker output streamed to the driver, Python warnings, Ray Data notices.
RAY_NOISE = re.compile(
    r"core_worker|logging\.cc|raylet|gcs_server|WARNING|Warning:|\[[^\]]* [IWEF] \d+ \d+\]|^[IWEF]\d{4} "
    r"| E | W |\(pid=|\(MapWorker|\(autoscaler|Progress bars disabled|[Dd]eprecat|Traceback")


@pytest.fixture(scope="module")
def locked_demo(tmp_path_factory):
    """The README's demo command, run in an empty folder with file permissions enforced; one photo
    of its tree cannot be read (mode 000), as happens with files copied from another account."""
    work = tmp_path_factory.mktemp("demo")
    locked = work / "raw" / "zz_locked" / "secret.jpg"
    locked.parent.mkdir(parents=True)
    shutil.copy(asset("verification/deepface/img1.jpg"), locked)
    os.chmod(locked, 0)
    return work, _without_root_bypass(["--demo"], cwd=work, timeout=400)


def test_an_unreadable_photo_gets_an_error_record_and_the_job_goes_on(locked_demo):
    work, out = locked_demo
    assert out.returncode == EXIT_FILES_FAILED, out.stderr[-3000:]
    records = {r["src"]: r for r in map(json.loads, (work / "aligned" / "manifest.jsonl").read_text().splitlines())}
    assert len(records) == 9  # the 8 demo photos and the locked one, one record each
    bad = records.pop("zz_locked/secret.jpg")
    assert bad["status"] == "error" and "Permission denied" in bad["error"], bad
    assert {r["status"] for r in records.values()} <= {"ok", "no_face"}
    assert sum(r["status"] == "ok" for r in records.values()) >= 6
    assert "error 1" in out.stdout


def test_the_demo_console_shows_no_ray_log_lines(locked_demo):
    """Ray's warnings, its C++ core's log lines and its workers' output stay in Ray's log folder
    (``--verbose`` shows them): the console holds the job's own lines only."""
    _, out = locked_demo
    noisy = [line for line in (out.stdout + out.stderr).splitlines() if RAY_NOISE.search(line)]
    assert not noisy, "\n".join(noisy)
    assert "demo: 8 photos in raw/" in out.stderr and "under raw" in out.stdout


# ------------------------------------------------------------------------ a real two-node cluster

# Runs in its own process (the test process may hold the suite's local Ray): a head with 1 CPU and
# a second node with 2, each a raylet of its own on this machine. Prints the address and node ids,
# then obeys stdin: "kill" removes the second node at once (its raylet and workers die, as when a
# machine is lost); end of input shuts the cluster down.
_CLUSTER = """
import json, sys, time
from ray.cluster_utils import Cluster
t0 = time.monotonic()
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
second = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "second": second.node_id,
                  "start_s": round(time.monotonic() - t0, 1)}), flush=True)
try:
    for line in sys.stdin:
        if line.strip() == "kill":
            cluster.remove_node(second, allow_graceful=False)
            print(json.dumps({"killed": True}), flush=True)
finally:
    cluster.shutdown()
"""


def _small_photos(root: Path, count: int) -> list[str]:
    """``count`` photos (8 deepface faces at 30 %, cycled) under 4 identity folders."""
    import cv2

    photos = sorted(p for p in asset("verification/deepface").iterdir() if p.suffix == ".jpg")[:8]
    small = [cv2.resize(cv2.imread(str(p)), None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA) for p in photos]
    rels = []
    for i in range(count):
        rel = f"id{i % 4}/photo_{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), small[i % len(small)])
        rels.append(rel)
    return sorted(rels)


def _check_outputs(dst: Path, rels: list[str]) -> None:
    """One ``ok`` record per input (in order), exactly its crop, a valid 112x112 image; no temporaries."""
    import cv2
    import numpy as np

    from pipeline.writers import TEMP_MARKER

    records = [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]
    assert [r["src"] for r in records] == rels
    assert all(r["status"] == "ok" and len(r["outputs"]) == 1 for r in records)
    crops = {p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")}
    assert crops == {str(Path(r).with_suffix(".jpg")) for r in rels}
    for rel in crops:
        img = cv2.imdecode(np.frombuffer((dst / rel).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (112, 112, 3), rel
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]


@pytest.mark.slow
def test_a_two_node_cluster_shares_the_work_and_losing_a_node_loses_no_photo(tmp_path, mobilenet_weights):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray Data starts the dataset once every detector actor is up (not as soon as the first is):
    # the actors of both nodes then share the chunks, however long one node takes to start its own
    env["RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S"] = "300"
    cluster = subprocess.Popen([PYTHON, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    t0 = time.monotonic()

    def job(src: Path, dst: Path, *extra: str) -> subprocess.Popen:
        cmd = [PYTHON, str(REPO / "jobs" / "align_dataset.py"), "--src", str(src), "--dst", str(dst),
               "--weights", str(mobilenet_weights), "--runtime", "torch", "--batch-size", "2", "--no-progress",
               "--address", info["address"], *extra]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    try:
        info = json.loads(cluster.stdout.readline())
        print(f"\ntwo-node cluster up in {info['start_s']} s")

        # both nodes alive: every photo ok, and the detector actors of both nodes did some
        src, dst = tmp_path / "raw", tmp_path / "aligned"
        rels = _small_photos(src, 24)
        t = time.monotonic()
        out, err = job(src, dst).communicate(timeout=300)
        assert "error 0" in out, err[-3000:]
        per_node = json.loads((dst / "summary.json").read_text())["photos_per_node"]
        print(f"two nodes: {len(rels)} photos in {time.monotonic() - t:.1f} s, per node {per_node}")
        assert set(per_node) == {info["head"], info["second"]} and sum(per_node.values()) == len(rels)
        _check_outputs(dst, rels)

        # the second node dies part-way, while reads are still queued: the head alone (1 CPU) then
        # cannot hold a restarted actor and a read task at once (Ray waits forever), and the
        # driver's watchdog stops the job; with fewer photos Ray may redo the work itself
        src, dst = tmp_path / "raw2", tmp_path / "aligned2"
        rels = _small_photos(src, 200)
        manifest = dst / "manifest.jsonl"
        stall_s = 15
        run = job(src, dst, "--stall-timeout", str(stall_s))
        deadline = time.monotonic() + 240
        while run.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 12:
                break
            time.sleep(0.05)
        assert run.poll() is None, run.communicate()[1][-3000:]
        before = manifest.read_bytes().count(b"\n")
        cluster.stdin.write("kill\n")
        cluster.stdin.flush()
        assert json.loads(cluster.stdout.readline()) == {"killed": True}
        killed = time.monotonic()
        out, err = run.communicate(timeout=stall_s + 240)
        print(f"node killed after {before} records; the run ended {time.monotonic() - killed:.1f} s later "
              f"with exit code {run.returncode}")
        if run.returncode == 0:  # Ray redid the lost work
            assert "error 0" in out, err[-3000:]
        else:  # Ray could not (the plan no longer fits what is left): stopped in bounded time, resumable
            assert run.returncode == EXIT_NODE_LOST, err[-3000:]
            last = [line for line in err.splitlines() if line.strip()][-1]
            assert last.startswith("error: lost Ray node(s)") and "rerun the same command to resume" in last, err
            t = time.monotonic()
            out, err = job(src, dst).communicate(timeout=300)
            print(f"rerun on the head alone: {time.monotonic() - t:.1f} s")
            assert "error 0" in out and "already done" in out, err[-3000:]
        _check_outputs(dst, rels)
        out, err = job(src, dst).communicate(timeout=300)
        assert f"{len(rels)} already done, 0 processed" in out, err[-3000:]
    finally:
        cluster.stdin.close()
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=30)
        print(f"cluster test: {time.monotonic() - t0:.1f} s in all")


def test_an_unreachable_cluster_address_is_one_line_and_nothing_written(tmp_path, mobilenet_weights):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    (src / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), src / "p" / "a.png")
    # a process of its own: this session's Ray, already up here, would be joined whatever --address says
    run = subprocess.run([PYTHON, str(REPO / "jobs" / "align_dataset.py"), "--src", str(src), "--dst", str(dst),
                          "--weights", str(mobilenet_weights), "--address", f"127.0.0.1:{port}", "--no-progress"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""})
    code, out, err = run.returncode, run.stdout, run.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, err
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot start or join the Ray cluster at 127.0.0.1:{port}")
    assert "--address" in lines[0] and "Traceback" not in out + err
    assert not dst.exists()
