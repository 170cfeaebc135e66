"""handjax.data.synthetic: rendered hands look like photos (content, all distinct)."""
import numpy as np

from handjax import data


def test_synthetic_images_look_like_photos_not_blank():
    ex = data.load_synthetic(n_per_class=5, image_size=64)
    per_image_std = ex.images.reshape(len(ex.ids), -1).std(1)
    assert per_image_std.min() > 10  # content and clutter, not a flat fill
    assert len({im.tobytes() for im in ex.images}) == 15


def test_two_photos_per_person_share_traits_and_metadata():
    """Photos 2j and 2j+1 of a class are one person's left and right hand: one subject,
    one skin tone and severity band, different hands."""
    ids = [f"synthetic/ra/{i:04d}" for i in range(6)]
    subjects, cols = data.synthetic_metadata(ids, seed=0)
    assert subjects[0] == subjects[1] != subjects[2] == subjects[3]
    assert cols["hand"].tolist() == ["left", "right"] * 3
    for j in (0, 2, 4):
        assert cols["skin_tone"][j] == cols["skin_tone"][j + 1]
        assert cols["severity_band"][j] == cols["severity_band"][j + 1] != "none"
    normal, cols = data.synthetic_metadata(["synthetic/normal/0000"], seed=0)
    assert cols["severity_band"].tolist() == ["none"]


def test_photos_drawn_in_worker_processes_are_the_same_photos(monkeypatch):
    """Many photos are drawn in spawned processes (one per core); each has its own random
    stream, so they are the photos one process draws, in the order asked."""
    from handjax.data import synthetic
    jobs = [(label, i) for label in (2, 0, 1) for i in (3, 0, 1)]
    monkeypatch.setattr(synthetic, "PARALLEL_MIN_PHOTOS", 1)
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 2)
    pooled = list(synthetic.photos(7, jobs, size=48))
    for (label, i), (image, severity) in zip(jobs, pooled, strict=True):
        one, sev = synthetic.photo(7, label, i, size=48)
        assert image.shape == (48, 48, 3) and severity == sev
        np.testing.assert_array_equal(image, one)


def test_a_users_script_draws_its_photos_without_spawning(monkeypatch, tmp_path):
    """Spawned workers import the program's main module first; a user's script without a
    main guard would run again in each of them. Such a script draws in its own process;
    launch.py, python -m handjax..., pytest and python -c use the pool."""
    import sys
    import types
    from handjax.data import synthetic
    assert synthetic._spawn_safe()   # pytest's main
    script = types.ModuleType("__main__")
    script.__file__, script.__spec__ = str(tmp_path / "my_analysis.py"), None
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert not synthetic._spawn_safe()
    def no_pool(*a, **k):
        raise AssertionError("a pool was started")
    monkeypatch.setattr(synthetic.concurrent.futures, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(synthetic, "PARALLEL_MIN_PHOTOS", 1)
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 2)
    drawn = list(synthetic.photos(7, [(0, 0), (2, 1)], size=32))
    np.testing.assert_array_equal(drawn[1][0], synthetic.photo(7, 2, 1, size=32)[0])
    script.__file__ = str(synthetic.Path(synthetic.__file__).resolve().parents[2] / "launch.py")
    assert synthetic._spawn_safe()
