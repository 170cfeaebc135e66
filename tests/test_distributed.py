"""handjax.train.distributed: padding helpers, cluster detection, and two CPU processes joined by
``jax.distributed`` (gloo collectives) training the smoke cell with its 5 folds sharded
unevenly over the 2 processes' devices: the same confusion matrices as one process (the
pinned golden file, which ``test_train`` checks against a one-process run)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handjax.train import distributed

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "smoke_confusions.json"

SCRIPT = r"""
import json, sys
from handjax.train import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax
from handjax import config
from handjax.train import run as train
assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
r = train.run(config.parse_run(config.cell("vgg16", "categorical", "smoke")), sys.argv[3])
print("RESULT " + json.dumps({k: r["decisions"][k]["confusion"] for k in ("cnn", "svm")}))
"""


def test_padded_folds_and_round_trip():
    assert [distributed.padded_folds(k, 2) for k in (4, 5, 1)] == [4, 6, 2]
    a = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    padded = distributed.pad_folds({"a": a}, 6, axis=1)["a"]
    np.testing.assert_array_equal(padded[:, 5], a[:, 0])         # a copy of a real fold
    np.testing.assert_array_equal(distributed.unpad_folds(padded, 5, axis=1), a)


def test_cluster_detection_and_flag_checks():
    assert not distributed.wanted({})
    assert distributed.wanted({"HANDJAX_DISTRIBUTED": "1"})
    assert not distributed.wanted({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    assert distributed.wanted({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert distributed.wanted({"OMPI_COMM_WORLD_SIZE": "2"})
    assert not distributed.initialize(env={})                     # nothing asked: one process
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("127.0.0.1:1", None, 0)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1", 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes train the smoke cell
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    address = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / f"process{i}.log" for i in (0, 1)]   # files: a full pipe would stall
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, address, str(i),
                               str(tmp_path / "run")], stdout=log.open("w"),
                              stderr=subprocess.STDOUT, env=env)
             for i, log in enumerate(logs)]
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outs = [log.read_text() for log in logs]
    for code, out in zip(codes, outs):
        assert code == 0, out[-3000:]
    golden = json.loads(GOLDEN.read_text())["vgg16_categorical"]
    for out in outs:
        line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
        assert json.loads(line[len("RESULT "):]) == {k: golden[k] for k in ("cnn", "svm")}
    run = tmp_path / "run"
    assert (run / "results.json").exists() and (run / "checkpoints").is_dir()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5 * 3   # written once
