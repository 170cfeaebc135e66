"""handjax.cli.launch, the entry point: the setup is checked before any work, and a full disk
anywhere in a run is one line naming the path."""
import errno
from pathlib import Path

import pytest

from cells import tiny_config
from handjax import cache
from handjax.cli import launch as run
from handjax.train import run as train
from handjax.errors import SetupError


@pytest.fixture
def no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started before the setup was checked")
    monkeypatch.setattr(train, "run", boom)


def test_cache_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch, no_training):
    (tmp_path / "cache").write_text("")
    for path, needle in ((tmp_path / "cache", "is a file, not a folder"),
                         (tmp_path / "cache" / "sub", "cannot be written (Not a directory)")):
        monkeypatch.setenv("HANDJAX_CACHE", str(path))
        with pytest.raises(SetupError) as err:
            run.main(tiny_config(), tmp_path / "run")
        assert str(path) in str(err.value) and needle in str(err.value)


def test_read_only_cache_is_refused_before_training(tmp_path, monkeypatch, no_training):
    """(chmod cannot make a folder read-only for root, so the write itself is refused.)"""
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "cache"))
    assert cache.check_cache_dir() == tmp_path / "cache"        # writable: accepted
    real = Path.write_text

    def read_only(self, *a, **k):
        if self.parent == tmp_path / "cache":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(SetupError, match=r"cache .* cannot be written \(Permission denied\)"):
        run.main(tiny_config(), tmp_path / "run")


def test_full_disk_anywhere_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """orbax and tensorstore wrap the OSError of the write: it is found through the chain."""
    target = str(tmp_path / "run" / "checkpoints" / "3" / "x.data")

    def full(*a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", target)
        except OSError as e:
            raise ValueError("orbax: save failed") from e
    monkeypatch.setattr(train, "run", full)
    with pytest.raises(SetupError) as err:
        run.main(tiny_config(), tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith(f"no space left on the device writing {target}")
    assert "rerun the same command to resume" in msg and "\n" not in msg


def test_disk_full_is_found_in_messages_and_not_invented():
    assert run.disk_full(RuntimeError("tensorstore: No space left on device [os error 28]"))
    assert run.disk_full(ValueError("something else")) is None
    assert run.disk_full(OSError(errno.EACCES, "Permission denied")) is None


def test_disk_full_message_of_tensorstore_names_the_file():
    msg = ('RESOURCE_EXHAUSTED: Error writing "params.x/0.0" in OCDBT database at local file '
           '"/w/checkpoints/3.tmp/ocdbt/": Failed writing: "/w/checkpoints/3.tmp/d/1e26": '
           "Failed to write 38285312 bytes to file 15: No space left on device [os_error_code='28']")
    assert run.disk_full(ValueError(msg)).filename == "/w/checkpoints/3.tmp/d/1e26"


# ------------------------------------------------ no run writes into photos or others' outputs
def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["photo_folder", "inside_data_root", "validate_out"])
def test_a_workdir_of_photos_or_of_another_command_is_refused_before_training(
        tmp_path, image_folder, no_training, where):
    from handjax.data import folders
    from handjax.errors import TrainingError
    photos = image_folder(tmp_path / "photos")
    config = tiny_config()
    if where == "photo_folder":          # the user's photos, not the run's data.root
        workdir = photos
    elif where == "inside_data_root":    # the run's own photo folder
        config.data.root = str(photos)
        workdir = photos / "run"
    else:
        workdir = folders.claim_output(tmp_path / "val", "validate", {"data": "x"})
        (workdir / "results.json").write_text("{}")
    before = _snapshot(tmp_path)
    with pytest.raises(TrainingError) as err:
        run.main(config, workdir)
    assert str(Path(workdir).resolve()) in str(err.value)
    assert "nothing was written" in str(err.value)
    assert _snapshot(tmp_path) == before and not (photos / "run").exists()


def test_a_runs_own_workdir_passes_the_guard(tmp_path):
    from handjax.train import workdir as workdirs
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "roc.png").write_bytes(b"")      # its own plots are no photos of the user's
    workdirs.check_run_target(tmp_path)


def test_a_missing_metadata_csv_is_one_line_before_training(tmp_path, no_training):
    from handjax.errors import ConfigError
    c = tiny_config()
    c.data.metadata = "~/no_such_meta.csv"
    with pytest.raises(ConfigError, match=r"config.data.metadata=/.*/no_such_meta.csv: no such"):
        run.main(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
