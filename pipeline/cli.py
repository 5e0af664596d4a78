"""``faceprep COMMAND [ARGS]``: the one console command (``[project.scripts]``), a dispatcher to each
command's ``main`` (also ``python -m pipeline.cli COMMAND [ARGS]``).

Each command lives beside the code it runs and imports only when chosen (``faceprep align
--help`` does not load torch); ``python jobs/<script>.py`` runs the same ``main`` from a checkout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True, kw_only=True)
class Command:
    """One sub-command: ``target`` is ``"module:function"``, a function taking ``(argv, *, prog=...)``
    and returning the exit code; ``script`` is the ``jobs/`` equivalent (``None``: none)."""

    name: str
    target: str
    summary: str
    script: str | None = None


COMMANDS: dict[str, Command] = {
    c.name: c for c in (
        Command(name="align", target="pipeline.job.cli:main", script="jobs/align_dataset.py",
                summary="align a folder of photos into ArcFace crops, on Ray (resumable)"),
        Command(name="detect", target="detector.cli:detect_main", script="python -m detector detect",
                summary="detect faces in images, write one JSON (and a drawing) per image"),
        Command(name="export", target="detector.cli:export_main", script="python -m detector export",
                summary="export RetinaFace weights to ONNX (for onnxruntime / OpenVINO)"),
        Command(name="eval-widerface", target="detector.evaluation.cli:main", script="jobs/eval_widerface.py",
                summary="WIDER FACE val easy / medium / hard AP (score predictions or run the detector)"),
        Command(name="eval-verification", target="pipeline.verification.cli:main",
                script="jobs/eval_verification.py",
                summary="1:1 verification (pairs CSV, LFW, IJB-C) per alignment source; the alignment study"),
        Command(name="report", target="pipeline.report_cli:main", script="jobs/report.py",
                summary="(re)build an align job's report.html from its manifest"),
        Command(name="train", target="detector.training.cli:command", script="jobs/train_detector.py",
                summary="train a RetinaFace detector with Ray Train (DDP)"),
    )
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: faceprep COMMAND [ARGS]  (faceprep COMMAND --help: the command's options)", "",
             "Face preprocessing: RetinaFace detection and ArcFace alignment.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``faceprep ARGV`` (default ``sys.argv[1:]``); returns the command's exit code (2: unknown command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"{_usage()}\n\nfaceprep: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, _, function = command.target.partition(":")
    return getattr(importlib.import_module(module), function)(rest, prog=f"faceprep {name}")


if __name__ == "__main__":
    sys.exit(main())
