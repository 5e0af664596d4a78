"""The command line: ``faceprep`` and its sub-commands, the ``jobs/`` wrappers, and every command the
README shows (each run with ``--help`` after its arguments are parsed, or on tiny real inputs)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys

import cv2
import pytest

from pipeline.cli import COMMANDS, main
from tests.shared import REPO_ROOT, asset
from tests.unit.test_cli import (
    JOBS,
    ReadmeCommand,
    _parser,
    _readme_blocks,
    _readme_command,
    _readme_commands,
    _weights_env,
)

PYTHON = sys.executable


def _env(**extra: str) -> dict[str, str]:
    """A plain environment (no ``RAY_*`` / ``FACEPREP_*``) in which this checkout is importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FACEPREP_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_dispatcher_runs_as_a_module():
    out = subprocess.run([PYTHON, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, env=_env(),
                         cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f"  {name} " in out.stdout for name in COMMANDS)


# ------------------------------------------------------------------------------ jobs/ wrappers


@pytest.mark.parametrize("script", JOBS, ids=lambda p: p.name)
def test_jobs_script_help_from_a_plain_checkout(script, tmp_path):
    """``python jobs/X.py --help`` from elsewhere, the checkout not on PYTHONPATH: the wrapper finds it."""
    env = _env()
    env.pop("PYTHONPATH")
    out = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python jobs/{script.name} ")


def _parse_and_help(command: ReadmeCommand):
    """(parse ARGS with the command's parser, run the command with ``--help``) of a README command."""
    if command.kind == "faceprep":
        return _parser(command.target).parse_args, lambda: main([command.target, "--help"])
    if command.kind == "detector":
        from detector.cli import build_parser
        from detector.cli import main as detector_main

        return (lambda args: build_parser().parse_args([command.target, *args]),
                lambda: detector_main([command.target, "--help"]))
    wrapper = runpy.run_path(str(REPO_ROOT / command.target), run_name="readme_check")
    return wrapper["build_parser"]().parse_args, lambda: wrapper["main"](["--help"])


def test_every_readme_command_parses_and_shows_its_help(capsys):
    """Each command's arguments are valid for its parser; then the command runs with ``--help``."""
    for command in _readme_commands():
        for name, value in command.env.items():
            assert name == "FACEPREP_WEIGHTS", command.text
            assert (REPO_ROOT / value / "retinaface_mobilenet0.25_biubug6.pth").is_file(), command.text
        if command.kind == "shell":
            script = REPO_ROOT / command.target
            assert script.is_file() and not command.args, command.text
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, command.text
            continue
        parse, run_help = _parse_and_help(command)
        if command.args:
            try:
                parse(command.args)
            except SystemExit:
                pytest.fail(f"README command does not parse: {command.text}\n{capsys.readouterr().err}")
        with pytest.raises(SystemExit) as exit_:
            run_help()
        assert exit_.value.code == 0, command.text
        assert capsys.readouterr().out.startswith("usage: "), command.text


@pytest.mark.slow
def test_readme_demo_then_the_jobs_command_then_the_report(tmp_path, capsys, monkeypatch):
    """The README's main command on its default inputs (``faceprep align --demo``), then the checkout's
    ``python jobs/align_dataset.py --src raw/ --dst aligned/`` (resumes: all done) and ``faceprep report
    aligned/``; the README's manifest example has the fields of a real record."""
    demo = _readme_command(r"faceprep align --demo$")
    out = subprocess.run([PYTHON, "-m", "pipeline.cli", demo.target, *demo.args], capture_output=True, text=True,
                         env=_env(**_weights_env()), cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "aligned" / "manifest.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok", "no_face"}

    rerun = _readme_command(r"^python jobs/align_dataset.py --src raw/ --dst aligned/$")
    out = subprocess.run([PYTHON, str(REPO_ROOT / rerun.target), *rerun.args], capture_output=True, text=True,
                         env=_env(**_weights_env()), cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len((tmp_path / "aligned" / "manifest.jsonl").read_text().splitlines()) == len(records)

    report = _readme_command(r"^faceprep report aligned/$")
    monkeypatch.chdir(tmp_path)
    assert main([report.target, *report.args, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == "aligned/report.html"

    (example,) = [json.loads(body) for lang, body in _readme_blocks() if lang == "json"]
    real = next(r for r in records if r["status"] == "ok" and r["faces"])
    assert set(example) == set(real)
    assert set(example["faces"][0]) == set(real["faces"][0])
    assert set(example["faces"][0]["quality"]) == set(real["faces"][0]["quality"])
    assert all(isinstance(real[k], type(v)) for k, v in example.items())


def test_readme_python_example_runs(tmp_path):
    (code,) = [body for lang, body in _readme_blocks() if lang == "python"]
    assert len(code.strip().splitlines()) <= 12
    shutil.copy(asset("verification/deepface/img1.jpg"), tmp_path / "a.jpg")
    shutil.copy(asset("images/group_insightface_t1.jpg"), tmp_path / "b.jpg")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=_env(**_weights_env()),
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    crop = cv2.imread(str(tmp_path / "a_crop.jpg"))
    assert crop is not None and crop.shape == (112, 112, 3)
