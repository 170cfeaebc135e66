"""``python -m handjax.bench processes``: handjax's first run, the plain peers and handjax's
second run as fresh processes from an empty cache."""
import json
import subprocess
import sys

import pytest

from handjax import config as configs
from handjax.bench import processes
from handjax.bench.protocol import protocol_configs


def _with_overrides(config, flags):
    """``--config.a.b=v`` flags applied as ``launch.py``'s parser applies them (the value
    read as the field's type)."""
    for flag in flags:
        key, value = flag[len("--config."):].split("=", 1)
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, type(getattr(node, leaf))(value))
    return config


@pytest.mark.parametrize("settings", [
    processes.Settings(),
    processes.Settings("vgg16", 64, 7, 1, "3+0", 3, 4, "none", "bfloat16", "/photos/x"),
])
def test_launch_runs_the_protocol_the_peers_run(settings):
    """The ``launch.py`` command's experiment file and overrides make the same cell as the
    peers' ``protocol_configs``, so all processes of the sequence run one protocol."""
    cmd = processes.launch_command(settings, processes.REPO / "w")
    config = cmd[cmd.index("--config") + 1]
    assert config.endswith(f"experiments/{settings.model}_categorical.py")
    module = {}
    exec(open(config).read(), module)
    launched = _with_overrides(module["get_config"](), cmd[cmd.index("--workdir") + 2:])
    e1, e2 = settings.epochs12
    peers = protocol_configs(settings.model, settings.image_size, settings.n_per_class, e1,
                             e2, settings.folds, settings.weights, settings.batch,
                             views=settings.views, root=settings.root)["config"]
    peers.model.dtype = settings.dtype
    assert configs.parse_run(launched) == configs.parse_run(peers)


def test_peer_command_carries_every_setting():
    s = processes.Settings("vgg16", 64, 7, 3, "3+1", 3, 4, "none", "auto", "/photos/x")
    args = processes.peer_command("keras", s)
    assert args[1:5] == ["-m", "handjax.bench", "processes", "--peer"]
    parsed = dict(zip(args[6::2], args[7::2]))
    assert parsed == {"--model": "vgg16", "--image-size": "64", "--n-per-class": "7",
                      "--views": "3", "--epochs": "3+1", "--folds": "3", "--batch": "4",
                      "--weights": "none", "--dtype": "auto", "--root": "/photos/x"}


def test_summary_ratios_are_over_the_second_run():
    walls = {"first": 33.0, "keras": 210.0, "torch": 80.0, "second": 25.0}
    assert processes.summary(walls) == pytest.approx(
        {"first_over_second": 1.32, "keras_over_second": 8.4, "torch_over_second": 3.2})
    assert processes.summary({"first": 2.0, "second": 4.0}) == {"first_over_second": 0.5}


def test_same_files_compares_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "predictions.csv").write_text("file,p\nx,0.5\n")
        (d / "results.json").write_text("{}\n")
    assert processes.same_files(a, b)
    (b / "predictions.csv").write_text("file,p\nx,0.50000001\n")
    assert not processes.same_files(a, b)


def test_a_failed_run_stops_the_sequence_in_one_line_with_its_log(tmp_path):
    """A photo folder that is not there: the first run refuses it, and the bench says which
    run failed, with the end of that run's output (its own one line)."""
    out = subprocess.run([sys.executable, "-m", "handjax.bench", "processes", "--quick",
                          "--root", str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    assert "bench processes: handjax first run exited 1:" in out.stderr
    assert "missing" in out.stderr and "Traceback" not in out.stderr


def test_a_missing_peer_package_is_one_line_before_any_run(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(SystemExit, match="torch/torchvision are not installed"):
        processes.main(["--quick", "--torch"])


@pytest.mark.slow   # three processes: two tiny handjax runs and the Keras peer
def test_processes_times_first_run_keras_and_second_run(tmp_path):
    """From an empty cache: the first run, the plain Keras protocol, then the second run,
    each a process; the ratios are those of the walls printed, and the two handjax runs
    wrote the same predictions.csv and results.json."""
    pytest.importorskip("keras")
    report = tmp_path / "processes.json"
    out = subprocess.run([sys.executable, "-m", "handjax.bench", "processes", "--quick",
                          "--keras", "--json", str(report)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    labels = [l.split("  ")[1].strip() for l in lines if l.startswith("  handjax") or
              l.startswith("  plain Keras 3 ")]
    assert labels[:3] == ["handjax first run", "plain Keras 3", "handjax second run"]
    got = json.loads(report.read_text())
    walls = got["wall_s"]
    assert set(walls) == {"first", "keras", "second"} and min(walls.values()) > 0
    assert got["keras_over_second"] == pytest.approx(walls["keras"] / walls["second"])
    assert got["first_over_second"] == pytest.approx(walls["first"] / walls["second"])
    assert got["identical"] is True
    assert got["settings"]["folds"] == 2 and got["settings"]["image_size"] == 32   # --quick
    assert f"plain Keras 3 / handjax second run: {got['keras_over_second']:.2f}x" in out.stdout
    # each handjax run's own clock is inside its process's wall
    assert all(got["inner_s"][k] < walls[k] for k in walls)
    assert "Traceback" not in out.stderr
