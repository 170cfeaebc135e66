"""The workdir guards: the ledger refuses changed data or weights, one run at a time,
--restart, and clear lines for a workdir that is a file."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cells import run, tiny_config
from handjax.data.cohort import data_fingerprint
from handjax.train import checkpoint, workdir as workdirs
from handjax.errors import TrainingError


def test_ledger_records_then_refuses_other_data(tmp_path):
    workdirs.check_ledger(tmp_path, {"data": "a", "weights": "w"})
    (tmp_path / "checkpoints").mkdir()
    workdirs.check_ledger(tmp_path, {"data": "a", "weights": "w"})       # same: fine
    with pytest.raises(TrainingError, match="other data") as err:
        workdirs.check_ledger(tmp_path, {"data": "b", "weights": "w"})
    assert "--restart" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TrainingError, match="weights"):
        workdirs.check_ledger(tmp_path, {"data": "a", "weights": "v"})


def test_damaged_ledger_is_one_clear_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "ledger.json").write_text("{trunc")
    with pytest.raises(TrainingError, match="ledger.json is damaged"):
        workdirs.check_ledger(tmp_path, {"data": "a"})


def test_data_fingerprint_sees_one_pixel():
    class Ex:
        ids, labels = ["a", "b"], np.array([0, 1])
        images = np.zeros((2, 4, 4, 3), np.uint8)
    a = data_fingerprint(Ex)
    Ex.images = Ex.images.copy()
    Ex.images[1, 2, 2, 0] = 1
    assert data_fingerprint(Ex) != a


def test_second_run_into_a_locked_workdir_stops_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from handjax.train import workdir as w\n"
         "with w.Lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=f"in use by pid {holder.pid}"):
            with workdirs.Lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdirs.Lock(tmp_path):      # a killed holder's lock is taken over
        pass


def test_workdir_that_is_a_file_is_one_clear_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        workdirs.open_workdir(f)


def _photo_folder(root, n=5, size=32):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("normal", "heberden", "ra")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (size, size, 3), np.uint8)
            img[..., c] = 255
            Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.mark.slow  # trains
def test_kill_mid_run_then_changed_folder_is_refused_and_restart_works(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    _photo_folder(photos)
    c = tiny_config(checkpoint_secs=0.0)
    c.data.root = str(photos)
    workdir = tmp_path / "run"
    real_save = checkpoint.save

    def save_then_die(manager, step, state, wait=True):
        real_save(manager, step, state, wait)
        raise KeyboardInterrupt                      # killed after the first epoch
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(c, workdir)
    monkeypatch.setattr(checkpoint, "save", real_save)
    img = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(img).save(photos / "ra" / "new.png")
    with pytest.raises(TrainingError, match="other data"):
        run(c, workdir)
    from handjax import config as configs
    from handjax.train import run as train
    results = train.run(configs.parse_run(c), workdir, restart=True)
    assert results["data"]["n"] == 16


def test_a_rerun_with_another_config_says_how_to_go_on(tmp_path):
    workdirs.claim(tmp_path, '{"train": {"lr1": 0.001}}')
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(TrainingError) as err:
        workdirs.claim(tmp_path, '{"train": {"lr1": 0.5}}')
    msg = str(err.value)
    assert "differs in train.lr1" in msg and "--restart" in msg and "--workdir" in msg


def test_a_run_that_stops_before_its_results_leaves_the_workdir_incomplete(tmp_path,
                                                                            monkeypatch):
    """A failure after training started (here: in preparing the data, standing in for one in
    evaluation) leaves INCOMPLETE, which compare and predict refuse; a finished run clears it."""
    from cells import tiny_spec
    from handjax import compare
    from handjax.train import features, run as train
    from handjax.model import ensemble as inference
    from handjax.errors import RunError

    def fail(*a, **k):
        raise RuntimeError("evaluation failed")
    monkeypatch.setattr(features, "prepare", fail)
    with pytest.raises(RuntimeError):
        train.run(tiny_spec(), tmp_path)
    assert (tmp_path / workdirs.INCOMPLETE).exists()
    (tmp_path / "predictions.csv").write_text("file\n")       # what a failed run may leave
    (tmp_path / "results.json").write_text("{}")
    for check in (lambda: compare._csv_path(str(tmp_path)),
                  lambda: compare._csv_path(str(tmp_path / "predictions.csv")),
                  lambda: inference.load_run(tmp_path)):
        with pytest.raises(RunError, match=f"{tmp_path} holds an unfinished run"):
            check()
    workdirs.mark_finished(tmp_path)
    workdirs.check_finished(tmp_path)
    assert compare._csv_path(str(tmp_path)) == tmp_path / "predictions.csv"


def test_validate_or_predict_out_inside_the_runs_training_photos_is_refused(tmp_path):
    """A new folder inside the run's data.root would be read as a class folder by the next
    run: refused, though it holds nothing yet."""
    from handjax.data.records import DataError
    photos = tmp_path / "photos"
    (photos / "normal").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"root": str(photos)}}))
    for command in ("validate", "predict"):
        with pytest.raises(DataError, match=f"lies inside {photos}"):
            workdirs.check_output_target(photos / "val", run, command, {})
    assert not (photos / "val").exists()
    assert workdirs.check_output_target(tmp_path / "val", run, "validate", {}) == (
        tmp_path / "val").resolve()


def test_compiled_programs_are_cached_per_machine_in_the_handjax_cache(tmp_path, monkeypatch):
    """JAX's persistent compilation cache lives in ``$HANDJAX_CACHE/jax/<machine digest>``
    (a second run in any workdir finds it; a CPU of other instructions gets its own folder),
    follows a changed ``$HANDJAX_CACHE``, and nothing is written beside the workdir."""
    import jax
    from handjax.models.kernels import plan as plans
    old = jax.config.jax_compilation_cache_dir
    try:
        for name in ("one", "two"):
            monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / name))
            workdirs.enable_compilation_cache()
            want = tmp_path / name / "jax" / plans.machine_digest()
            assert jax.config.jax_compilation_cache_dir == str(want)
        other = dict(plans.machine(), cpu="another CPU")
        assert plans.machine_digest(other) != plans.machine_digest()
        run(tiny_config(), tmp_path / "runs" / "a")
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]
    finally:
        jax.config.update("jax_compilation_cache_dir", old)
        from jax.experimental.compilation_cache import compilation_cache
        compilation_cache.reset_cache()
