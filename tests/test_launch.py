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
    err = out.stderr.strip().splitlines()
    assert err == ["handjax: error: bad flag or config: unknown config key 'trian.lr1' "
                   "(--config.trian.lr1=0.1); did you mean train.lr1?"]
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.train.lr3=0.1", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("'train.lr3'") == 1
    assert "did you mean train.lr1 or train.lr2?" in out.stderr and "\\n" not in out.stderr


def test_launch_bad_value_type_keeps_its_quotes_whole(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.train.epochs1=ten", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith("'ten'") and out.stderr.count("\n") == 1


def test_launch_config_file_that_does_not_parse_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("def get_config():\n    return {\n\nx = (\n")
    out = _launch("--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("handjax: error:") and f"{bad}:" in line and "does not parse" in line


def test_launch_infinite_learning_rate_is_refused_before_any_work(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.train.lr1=inf", "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "handjax: error: config.train.lr1=inf: expected a finite number > 0.0"]
    assert not (tmp_path / "run").exists()          # refused before the workdir is made


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_launch_cache_that_is_a_file_is_one_clear_line(tmp_path, kind, monkeypatch):
    (tmp_path / "cache").write_text("")
    cache = tmp_path / "cache" / ("" if kind == "file" else "sub")
    monkeypatch.setenv("HANDJAX_CACHE", str(cache).rstrip("/"))
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "HANDJAX_CACHE" in line and str(cache).rstrip("/") in line


def test_launch_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT once the run has started (its header line): one line saying how to go on."""
    import signal
    env = {k: v for k, v in os.environ.items() if k != "HANDJAX_DEBUG"}
    # SIGINT as a terminal leaves it, whatever this runner inherited (``nohup pytest &``
    # starts everything with it ignored, and Python keeps it ignored).
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config",
                             str(ROOT / "experiments/vgg16_categorical.py:smoke"),
                             "--workdir", str(tmp_path / "run")], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        assert first.startswith("handjax: vgg16_categorical_smoke"), first
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, rest[-2000:]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert rest.strip().splitlines()[-1] == (
        "handjax: error: interrupted; rerun the same command to resume")


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
    bars = [i for i, l in enumerate(lines) if "%|" in l]
    assert lines[0].startswith("handjax: mobilenetv2_binary_smoke") and bars and bars[0] > 0
    tail = "\n".join(lines[-6:])
    assert "cnn" in tail and "svm" in tail and "results.md" in tail and " ± " in tail


def test_launch_partial_distributed_flags_are_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--coordinator_address=127.0.0.1:1", "--process_id=0", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--num_processes" in out.stderr
