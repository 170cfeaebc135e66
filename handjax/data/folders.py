"""Paths named by a user, and the folders a command may write into.

Two rules every command follows (docs/reliability.md):

* every path a user names is resolved once, where it comes in (``~``, relative to the
  current folder, a trailing slash, ``..``): :func:`resolve_path`; the resolved path is what
  gets recorded, so a run can be read from any folder and ``/x/base/`` is ``/x/base``;
* no command writes into a folder that holds another command's results or the user's
  photos (:func:`check_output`, :func:`claim_output`): a command's output folder carries a small marker file
  (:data:`MARKER`) naming the command and what it was run on; a rerun of the same command
  on the same inputs may write there again, anything else is refused with one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from handjax.data.records import DataError

MARKER = ".handjax-output.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What a training run (launch.py) leaves in its workdir, or validate in its --out.
RESULT_NAMES = ("config.json", "ledger.json", "checkpoints", "results.json", "results.md",
                "predictions.csv", "metrics.jsonl")
_PHOTO_SCAN_LIMIT = 5000   # entries looked at when searching a folder for photos


def resolve_path(path) -> Path:
    """``path`` as an absolute path: ``~`` expanded, relative to the current folder,
    trailing slashes and ``..`` gone, symlinks followed (a link and its target are one
    folder). A path that does not exist is resolved as far as it goes."""
    return Path(os.path.expanduser(str(path))).resolve()


def resolve_text(text) -> str:
    """:func:`resolve_path` for an optional path held as text ("" stays "")."""
    return str(resolve_path(text)) if str(text).strip() else ""


def check_output(out, command: str, inputs: dict, *, flag: str = "--out",
                 outside=()) -> Path:
    """``out`` resolved, when ``command`` (run on ``inputs``) may write into it; else one
    DataError naming the folder and why. Refused: ``out`` is a file; it lies inside one of
    the ``outside`` folders (the photos the command reads); it holds another command's
    outputs, or the same command's on other ``inputs``; it holds a run's or other results
    without a marker; it holds photos. Nothing is written (:func:`claim_output` writes)."""
    out = resolve_path(out)
    problem = output_problem(out, command, inputs, outside)
    if problem:
        raise DataError(f"{flag} {out} {problem}; nothing was written. Choose a new or empty "
                        f"folder for {flag}")
    return out


def claim_output(out, command: str, inputs: dict, *, flag: str = "--out",
                 outside=()) -> Path:
    """:func:`check_output`, then create ``out`` and mark it as ``command``'s (on
    ``inputs``), just before the command writes its files there. An OSError of the write
    (a read-only folder, a full disk) is left to the caller, which words it with the rest
    of its writes."""
    out = check_output(out, command, inputs, flag=flag, outside=outside)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"command": command, "inputs": inputs},
                                         indent=2, sort_keys=True) + "\n")
    return out


def output_problem(out: Path, command: str, inputs: dict, outside=()) -> str | None:
    """Why ``command`` (run on ``inputs``) must not write into ``out``, or None."""
    if out.exists() and not out.is_dir():
        return "is a file, not a folder"
    for folder in outside:
        folder = resolve_path(folder)
        if out == folder or folder in out.parents:
            return f"lies inside {folder}, which this command reads"
    if not out.exists():
        return None
    marker = read_marker(out)
    if marker is not None and not any(p.name != MARKER for p in out.iterdir()):
        return None   # a command that stopped before writing anything: an empty folder
    if marker is not None:
        if marker.get("command") != command:
            return f"holds the outputs of python -m handjax.{marker.get('command', '?')}"
        if marker.get("inputs") != inputs:
            return (f"holds the outputs of another {command} "
                    f"({_describe(marker.get('inputs'))})")
        return None
    found = [n for n in RESULT_NAMES if (out / n).exists()]
    if {"config.json", "ledger.json"} & set(found):
        return f"is a training run's workdir ({', '.join(found)})"
    if found:
        return f"holds another command's results ({', '.join(found)})"
    return _photo_problem(out)


def read_marker(folder: Path) -> dict | None:
    """The marker :func:`claim_output` left in ``folder``, or None (a damaged one counts
    as another command's)."""
    path = Path(folder) / MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"command": "? (damaged marker)"}
    return marker if isinstance(marker, dict) else {"command": "? (damaged marker)"}


def _photo_problem(folder: Path) -> str | None:
    """"holds photos (<first one>)" when an image file lies under ``folder`` (any depth,
    hidden entries skipped); a folder of more than :data:`_PHOTO_SCAN_LIMIT` files is
    refused unread (a home folder given by mistake, say)."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                return f"holds photos ({(Path(dirpath) / name).relative_to(folder)})"
            seen += 1
            if seen > _PHOTO_SCAN_LIMIT:
                return f"holds more than {_PHOTO_SCAN_LIMIT} files"
    return None


def _describe(inputs) -> str:
    if not isinstance(inputs, dict) or not inputs:
        return "other inputs"
    return ", ".join(f"{k} {v}" for k, v in sorted(inputs.items()))
