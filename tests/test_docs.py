"""The doc runner: every command in a fenced ```bash block of README.md and docs/*.md runs.

A page's bash blocks are run in order, in one scratch folder per page (``launch.py`` and
``experiments/`` linked in), so a later command can use what an earlier one wrote, as a
reader following the page would. Commands run on tiny settings (:func:`tiny`): a training
config gets its ``:smoke`` variant, a benchmark its ``--quick`` one. A few kinds of command
cannot run inside a test and are named with the reason (:data:`NOT_HERE`); anything else the
runner does not know is a failure, so a new kind of command cannot slip past it. Usage
synopses with ``[optional]`` parts belong in ```text blocks, which are not run.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
RUN_LANGS = {"bash", "sh", "shell"}

# what cannot run inside a test, by the command's first words -> why
NOT_HERE = {
    "pip install": "installs: .ci/run does exactly this before the tests",
    "python3 -m venv": "installs: .ci/run does exactly this before the tests",
    ". .venv/bin/activate": "installs: .ci/run does exactly this before the tests",
    "python -m pytest": "the tests themselves (this runner is one of them)",
    "gcloud": "a TPU pod: not on a CI machine",
    "srun": "a Slurm cluster: not on a CI machine",
    "mpirun": "an MPI cluster: not on a CI machine",
    "python -m handjax.serve": "a server that runs until stopped: tests/test_serve*.py start "
                               "it on loopback and drive it (API and a real browser)",
    "python -m handjax.bench gpu-study": "needs an accelerator (it refuses on a CPU)",
}
# the commands the runner runs: python launch.py, python -m handjax.<command>, and these
SHELL_TOOLS = {"ls", "cat", "head", "cp", "mkdir", "test", "du", "rm"}


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """The fenced blocks of a markdown page: (language, lines)."""
    out, lang, lines = [], None, []
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if m and lang is None:
            lang, lines = m.group(1) or "", []
        elif line.strip() == "```" and lang is not None:
            out.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def commands(text: str) -> list[str]:
    """The commands of a page's bash blocks, in order: continuation lines joined, comments
    and blank lines dropped, ``a && b`` split into its pieces."""
    cmds = []
    for lang, lines in blocks(text):
        if lang not in RUN_LANGS:
            continue
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            # `a && b`: each piece on its own (an install step, then a run)
            cmds += [" ".join(piece.split()) for piece in _and_pieces(line) if piece.strip()]
    return cmds


def _and_pieces(line: str) -> list[str]:
    """``a && b`` -> ``[a, b]``, leaving an ``&&`` inside quotes alone."""
    pieces, quote, start, i = [], None, 0, 0
    while i < len(line):
        c = line[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif line.startswith("&&", i):
            pieces.append(line[start:i])
            start, i = i + 2, i + 1
        i += 1
    return pieces + [line[start:]]


def reason_not_run(cmd: str) -> str | None:
    """Why ``cmd`` is not run here (None: it is run)."""
    for prefix, why in NOT_HERE.items():
        if cmd.startswith(prefix):
            return why
    return None


def _smoke(config: str) -> str:
    """``experiments/x.py[:variant]`` -> ``experiments/x.py:smoke``."""
    return config.split(":", 1)[0] + ":smoke"


def refused(cmd: str) -> tuple[str, bool]:
    """``cmd || true`` shows a command handjax refuses: (the command, True)."""
    bare = re.sub(r"\s*\|\|\s*true$", "", cmd)
    return bare, bare != cmd


def tiny(cmd: str) -> str:
    """``cmd`` on tiny settings; raises ValueError for a command the runner does not know."""
    cmd, _ = refused(cmd)
    if "[" in cmd or "..." in cmd or "…" in cmd:
        raise ValueError(f"a usage synopsis, not a command (put it in a ```text block): {cmd}")
    words = shlex.split(cmd)
    if words[:2] == ["python", "launch.py"] or words[:3] == ["python", "-m", "handjax.tune"]:
        words = [_smoke(w) if w.startswith("experiments/") else w for w in words]
        words = [f"--config={_smoke(w.split('=', 1)[1])}" if w.startswith("--config=")
                 else w for w in words]
    elif words[:3] == ["python", "-m", "handjax.bench"]:
        if "--quick" not in words:
            words.append("--quick")
    elif not (words[:2] == ["python", "-m"] and words[2].startswith("handjax.")
              or words[0] in SHELL_TOOLS):
        raise ValueError(f"the doc runner does not know this command: {cmd}")
    return shlex.join(words)


# --------------------------------------------------------------------------- fast checks
def test_a_page_s_bash_commands_are_read_in_order():
    page = ("text\n```bash\n# a comment\npip install -e . && python launch.py \\\n"
            "    --config experiments/a.py \\\n"
            "    --workdir runs/a   # trailing\n\npython -m handjax.predict --workdir runs/a "
            "x.png\n```\n```text\npython -m handjax.predict [--json]\n```\n")
    assert commands(page) == ["pip install -e .", "python launch.py --config experiments/a.py --workdir runs/a",
                              "python -m handjax.predict --workdir runs/a x.png"]


def test_tiny_settings():
    assert tiny("python launch.py --config experiments/vgg19_custom.py") == \
        "python launch.py --config experiments/vgg19_custom.py:smoke"
    assert tiny("python launch.py --config=experiments/study.py:extended --workdir r") == \
        "python launch.py --config=experiments/study.py:smoke --workdir r"
    assert tiny("python -m handjax.bench protocol --keras").endswith("--keras --quick")
    with pytest.raises(ValueError, match="synopsis"):
        tiny("python -m handjax.predict --workdir W photo.jpg [more.jpg ...]")
    with pytest.raises(ValueError, match="does not know"):
        tiny("curl http://example.com")
    assert refused("python -m handjax.data export --out x || true") == (
        "python -m handjax.data export --out x", True)
    assert tiny("python -m handjax.data export --out x || true") == \
        "python -m handjax.data export --out x"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_on_the_page_is_known(page):
    """Every fenced command either runs on tiny settings or is named in NOT_HERE."""
    for cmd in commands(page.read_text()):
        if reason_not_run(cmd) is None:
            tiny(cmd)


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = set(re.findall(r"\(docs/([\w.-]+\.md)\)", readme))
    assert len(links) >= 4 and all((ROOT / "docs" / l).is_file() for l in links)
    assert len(commands(readme)) >= 2


# --------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HANDJAX_CACHE=os.environ.get(
        "HANDJAX_CACHE", str(tmp_path_factory.mktemp("cache"))))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


TRAINED: dict[str, Path] = {}   # a training command already run this session -> a copy of
                                # its workdir as the command left it (before later commands)


def _workdir(cmd: str) -> str | None:
    words = shlex.split(cmd)
    return words[words.index("--workdir") + 1] if "--workdir" in words else None


@pytest.fixture(scope="module")
def trained_copies(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_on_the_page_runs(page, doc_env, tmp_path, trained_copies):
    """Each command exits 0; one shown with ``|| true`` is refused: exit 1 and one
    ``handjax: error:`` line. A training command another page already ran in this session
    (the same command, hence the same files: runs are reproducible) has its workdir copied
    instead of trained again."""
    (tmp_path / "launch.py").symlink_to(ROOT / "launch.py")
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    ran = 0
    for cmd in commands(page.read_text()):
        if reason_not_run(cmd):
            continue
        run, expect_refusal = tiny(cmd), refused(cmd)[1]
        workdir = _workdir(run) if run.startswith("python launch.py") else None
        if workdir and run in TRAINED and TRAINED[run].is_dir():
            shutil.copytree(TRAINED[run], tmp_path / workdir, symlinks=True)
            continue
        r = subprocess.run(["bash", "-c", run], cwd=tmp_path, env=doc_env,
                           capture_output=True, text=True, timeout=900)
        if expect_refusal:
            errors = [l for l in r.stderr.splitlines() if l.startswith("handjax: error:")]
            assert r.returncode == 1 and len(errors) == 1, \
                f"{page.name}: `{cmd}` should be refused in one line:\n{r.stderr[-3000:]}"
        else:
            assert r.returncode == 0, f"{page.name}: `{cmd}` failed:\n{r.stderr[-3000:]}"
        if workdir:   # as this command left it, before the page's later commands write
            TRAINED[run] = trained_copies / f"{len(TRAINED)}"
            shutil.copytree(tmp_path / workdir, TRAINED[run], symlinks=True)
        ran += 1
    print(f"{page.name}: {ran} commands ran")
