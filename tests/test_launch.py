"""launch.py as a user runs it: one clear line for bad input, a quiet console, a summary."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "HANDJAX_DEBUG"}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def test_launch_misspelt_key_is_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.trian.lr1=0.1", cwd=tmp_path)
    assert out.returncode != 0
    assert "trian" in out.stderr
    assert "Traceback" not in out.stderr
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.train.lr=0.1", cwd=tmp_path)
    assert 'Did you mean "lr2"' in out.stderr and "\\n" not in out.stderr


def test_launch_missing_data_folder_is_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  f"--config.data.root={tmp_path / 'nope'}", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    err = [l for l in out.stderr.splitlines() if l.startswith("handjax: error:")]
    assert len(err) == 1 and "nope" in err[0]


def test_launch_bad_value_names_the_key(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.train.batch_size=-4", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "config.train.batch_size=-4" in out.stderr


@pytest.mark.slow  # end to end
def test_launch_end_to_end_console_is_quiet_and_ends_with_a_summary(tmp_path):
    """The README's smoke command: no third-party INFO lines, our summary at the end."""
    out = _launch("--config", str(ROOT / "experiments/mobilenetv2_binary.py:smoke"),
                  "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == "mobilenetv2" and results["loss"] == "binary"
    lines = [l for l in out.stderr.replace("\r", "\n").splitlines() if l.strip()]
    noisy = [l for l in lines if l.startswith(("I1", "I0", "INFO", "W1", "W0"))
             or "orbax" in l.lower() or "Unable to initialize backend" in l
             or "Warning" in l or "warnings.warn" in l]
    assert not noisy, noisy[:5]
    ours = [l for l in lines if l.startswith("handjax:")]
    assert ours and ours[-1].endswith("done")
    tail = "\n".join(lines[-6:])
    assert "cnn" in tail and "svm" in tail and "results.md" in tail and " ± " in tail


def test_launch_partial_distributed_flags_are_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--coordinator_address=127.0.0.1:1", "--process_id=0", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--num_processes" in out.stderr
