"""The command line: ``faceprep`` and its sub-commands, the ``jobs/`` wrappers, and every command the
README shows (each run with ``--help`` after its arguments are parsed, or on tiny real inputs)."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import runpy
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, main
from tests.shared import REPO_ROOT, asset, shared_root

README = REPO_ROOT / "README.md"
JOBS = sorted((REPO_ROOT / "jobs").glob("*.py"))

# Each sub-command's parser factory (``prog`` as its only argument).
PARSERS = {
    "align": "pipeline.job.cli:build_parser",
    "detect": "detector.cli:build_detect_parser",
    "export": "detector.cli:build_export_parser",
    "eval-widerface": "detector.evaluation.cli:build_parser",
    "eval-verification": "pipeline.verification.cli:build_parser",
    "report": "pipeline.report_cli:build_parser",
    "train": "detector.training.cli:build_parser",
}


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _parser(command: str) -> argparse.ArgumentParser:
    return _load(PARSERS[command])(f"faceprep {command}")


def _weights_env() -> dict[str, str]:
    return {"FACEPREP_WEIGHTS": str(shared_root() / "assets" / "weights")}


# ------------------------------------------------------------------------------ faceprep itself


def test_faceprep_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: faceprep COMMAND")
    listed = [line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines() if line.strip()]
    assert listed == list(COMMANDS) == list(PARSERS)
    assert main([]) == 2 and "usage: faceprep" in capsys.readouterr().err
    assert main(["aling"]) == 2
    assert "unknown command 'aling'; choose from align, detect" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_help_is_its_own_parser(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: faceprep {command} ")
    assert out == _parser(command).format_help()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_states_each_default_once(command):
    """No "(default fp32) (default: fp32)": every option's help names its default at most once."""
    parser = _parser(command)
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text
    assert not re.search(r"\(default[^()]*\)\s*\(default", text), text
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            params = {**vars(action), "prog": parser.prog}
            help_text = action.help % params if "%(" in action.help else action.help
            assert len(re.findall(r"\bdefault\b", help_text)) <= 1, (action.option_strings, help_text)


def test_the_console_script_is_the_dispatcher():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project runs on 3.10)
    assert re.search(r'^\[project\.scripts\]\nfaceprep = "pipeline\.cli:main"\n', pyproject, flags=re.M)
    assert re.search(r'^include = \[.*"pipeline\*".*\]$', pyproject, flags=re.M)
    assert re.search(r'^dev = \[[^\]]*"ruff[>=~ ]', pyproject, flags=re.M)
    for command in COMMANDS.values():  # every target exists and takes (argv, *, prog)
        assert "prog" in _load(command.target).__code__.co_varnames


def test_installed_code_does_not_edit_sys_path():
    offenders = [str(p.relative_to(REPO_ROOT)) for package in ("common", "detector", "pipeline")
                 for p in (REPO_ROOT / package).rglob("*.py") if "sys.path" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("script", JOBS, ids=lambda p: p.name)
def test_jobs_script_is_a_thin_wrapper_of_the_command(script):
    lines = script.read_text().splitlines()
    assert len(lines) <= 150
    target = {c.script: c for c in COMMANDS.values()}[f"jobs/{script.name}"].target
    module = importlib.import_module(target.partition(":")[0])
    assert runpy.run_path(str(script), run_name="wrapper")["main"] is module.main


def test_detect_description_names_the_real_output_layout():
    """Every "inputs -> outputs" example of the description is what ``output_stems`` gives."""
    from detector.cli import DETECT_DESCRIPTION, output_stems

    examples = re.findall(r"((?:[\w/]+\.jpg ?)+) -> ((?:DIR/[\w/]+\.json ?)+)", DETECT_DESCRIPTION)
    assert len(examples) == 2
    for inputs, outputs in examples:
        stems = output_stems([Path(p) for p in inputs.split()])
        assert [f"DIR/{s}.json" for s in stems] == outputs.split()


def test_setup_installs_no_browser_and_the_test_command_does():
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    test = (REPO_ROOT / "scripts" / "test.sh").read_text()
    assert "chromium" not in setup.lower().replace("scripts/test.sh installs chromium", "")
    assert "apt-get" not in setup
    assert "bash scripts/setup.sh" in test and "apt-get install -y -qq chromium" in test


# ------------------------------------------------------------------------------ the README's commands


@dataclass(frozen=True)
class ReadmeCommand:
    text: str
    env: dict[str, str]
    kind: str  # "faceprep" | "detector" | "script" | "shell"
    target: str  # sub-command, jobs/ script or shell script
    args: list[str]


def _readme_blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def _readme_commands() -> list[ReadmeCommand]:
    """Every command line of the README: its shell code blocks and the command table's cells."""
    lines = []
    for lang, body in _readme_blocks():
        if lang in ("", "sh", "bash"):
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                lines += [part.strip() for part in line.split("&&") if part.strip()]
    for row in README.read_text().splitlines():
        if row.startswith("|"):
            lines += re.findall(r"`((?:faceprep|python) [^`]*)`", row)
    commands = []
    for line in lines:
        tokens = shlex.split(line)
        env = {}
        while "=" in tokens[0]:
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
        if tokens[0] == "bash":
            commands.append(ReadmeCommand(line, env, "shell", tokens[1], tokens[2:]))
        elif Path(tokens[0]).name == "faceprep":
            commands.append(ReadmeCommand(line, env, "faceprep", tokens[1], tokens[2:]))
        elif tokens[:3] == ["python", "-m", "detector"]:
            commands.append(ReadmeCommand(line, env, "detector", tokens[3], tokens[4:]))
        elif tokens[0] == "python" and tokens[1].startswith("jobs/"):
            commands.append(ReadmeCommand(line, env, "script", tokens[1], tokens[2:]))
        else:
            pytest.fail(f"README command this test does not know how to check: {line}")
    return commands


def test_the_readme_shows_every_command_in_its_table():
    commands = _readme_commands()
    assert len(commands) >= 20
    assert {c.target for c in commands if c.kind == "faceprep"} == set(COMMANDS)
    assert {c.target for c in commands if c.kind == "script"} == {f"jobs/{p.name}" for p in JOBS}
    assert len(README.read_text().splitlines()) <= 200


def _readme_command(pattern: str) -> ReadmeCommand:
    found = [c for c in _readme_commands() if re.search(pattern, c.text)]
    assert found, f"the README no longer has a command matching {pattern!r}"
    return found[0]


def test_readme_detect_command_on_two_photos(tmp_path, monkeypatch, capsys):
    command = _readme_command(r"^faceprep detect ")
    (tmp_path / "photos").mkdir()
    shutil.copy(asset("verification/deepface/img1.jpg"), tmp_path / "photos" / "img1.jpg")
    shutil.copy(asset("images/group_insightface_t1.jpg"), tmp_path / "photos" / "t1.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEPREP_WEIGHTS", _weights_env()["FACEPREP_WEIGHTS"])
    args = [str(p.relative_to(tmp_path)) for a in command.args if "*" in a for p in sorted(tmp_path.glob(a))]
    args += [a for a in command.args if "*" not in a]
    assert len(args) == len(command.args) + 1
    assert main([command.target, *args]) == 0
    for stem in ("img1", "t1"):
        record = json.loads((tmp_path / "det" / f"{stem}.json").read_text())
        assert record["image"] == f"photos/{stem}.jpg" and record["faces"]
        assert set(record) == {"image", "width", "height", "faces"}
        assert (tmp_path / "det" / f"{stem}.jpg").is_file()
