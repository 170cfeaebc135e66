"""``handjax.bench``: its FLOP count (a hand count) and the ``steps`` command line."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from handjax.bench import suite as bench
from handjax.train.flops import jaxpr_flops

CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def test_jaxpr_flops_counts_convs_dots_and_scan_bodies():
    def f(x, k, a, b):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=CONV_DIMS)
        z, _ = jax.lax.scan(lambda c, _: (c @ b, None), a, None, length=3)
        return y.sum() + z.sum()
    x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    a, b = jnp.ones((5, 6)), jnp.ones((6, 6))
    conv = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)       # 2 x outputs x (window x in-channels)
    dots = 3 * 2 * (5 * 6) * 6                       # scanned 3 times
    assert jaxpr_flops(jax.make_jaxpr(f)(x, k, a, b)) == conv + dots


def test_train_step_flops_are_three_forward_passes():
    """VGG16 at 32 px, batch 2: forward, kernel gradients and input gradients (all but the
    first layer's, whose input is no parameter), plus the head's three small matmuls."""
    size, batch = 32, 2
    _, args, _, flops = bench.full_train_step("vgg16", "xla", size, batch)
    convs = [(64, 3), (64, 64), (128, 64), (128, 128)] + [(256, 128)] + [(256, 256)] * 2 \
        + [(512, 256)] + [(512, 512)] * 5
    sides = [32] * 2 + [16] * 2 + [8] * 3 + [4] * 3 + [2] * 3
    fwd = [2 * batch * s * s * 9 * cin * cout for (cout, cin), s in zip(convs, sides)]
    head = 3 * 2 * batch * 512 * 3
    assert flops == pytest.approx(3 * sum(fwd) - fwd[0] + head, rel=1e-9)


def test_steps_command_writes_rows(tmp_path):
    out = tmp_path / "steps.json"
    assert bench.main(["steps", "--quick", "--convs", "xla", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["steps"]
    assert [r["conv"] for r in rows] == ["xla"]
    assert rows[0]["gflops"] > 0 and rows[0]["images_per_s"] > 0


def test_steps_command_rejects_unknown_conv():
    with pytest.raises(SystemExit):
        bench.main(["steps", "--convs", "fft"])


def test_scaling_ratios_and_table():
    """Per-photo time relative to the smallest N of the same cache setting; RSS relative to
    the in-RAM run of the same N. (``scaling --quick`` itself takes minutes: not run here.)"""
    rows = [{"n": n, "spill": s, "wall_s": w, "peak_rss_gib": r, "cache_mib": 1.0,
             "train_s": 1.0}
            for n, s, w, r in [(30, False, 3.0, 1.0), (30, True, 6.0, 0.5),
                               (120, False, 6.0, 2.0), (120, True, 24.0, 1.0)]]
    out = bench.scaling_ratios(rows)
    assert [r["per_photo_ratio"] for r in out] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert [r["rss_vs_ram"] for r in out] == pytest.approx([1.0, 0.5, 1.0, 0.5])
    assert [r["rss_vs_first"] for r in out] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    table = bench.scaling_table(out)
    assert table.count("\n") == 1 + len(rows) and "| 120 | disk |" in table


def test_scaling_png_folder_is_written_once_and_shared(tmp_path, monkeypatch):
    """``scaling``'s PNG folders: n/3 synthetic hands per class, readable by the folder
    loader; a second N links the first one's files instead of rendering them again."""
    from handjax.data.sources import load_folder
    from handjax.data.synthetic import render_hand, subject_traits
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path))
    small = bench.png_folder(15, 32)
    assert bench.png_folder(15, 32) == small
    files = sorted(small.rglob("*.png"))
    assert len(files) == 15 and {f.parent.name for f in files} == {"normal", "heberden", "ra"}
    larger = bench.png_folder(18, 32)
    same = larger / "ra" / "hand00003.png"
    assert same.stat().st_ino == (small / "ra" / "hand00003.png").stat().st_ino
    traits = subject_traits(0, 2, 1)
    drawn = render_hand(np.random.default_rng([0, 2, 3]), 2, traits["severity"], 32,
                        traits=traits, hand="right")
    np.testing.assert_array_equal(np.asarray(Image.open(same).convert("RGB")), drawn)
    examples = load_folder(larger, image_size=32)
    assert len(examples.labels) == 18
    spec = bench.scaling_spec(18, 32, "1+1", "vgg16", True, larger)
    assert spec.data.root == str(larger) and spec.train.cache_budget_gb == 0.0


@pytest.mark.parametrize("argv,needle", [
    (["scaling", "--epochs", "2,1"], "argument --epochs"),
    (["scaling", "--epochs", "0+0"], "argument --epochs"),
    (["scaling", "--sizes", "30,x"], "argument --sizes"),
    (["protocol", "--folds", "1"], "argument --folds"),
    (["protocol", "--image-size", "-5"], "argument --image-size"),
    (["protocol", "--epochs", "2+1+1"], "argument --epochs")])
def test_bad_flag_values_are_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err


def test_epochs_flag_normalises_a_good_value():
    from handjax import console
    assert console.epochs("2+1") == "2+1" and console.epochs(" 3 + 0") == "3+0"


def test_gpu_study_refuses_on_cpu_in_one_line(capsys):
    if jax.default_backend() != "cpu":
        pytest.skip("an accelerator is visible")
    from handjax.bench import gpu as bench_gpu
    with pytest.raises(SystemExit) as e:
        bench.main(["gpu-study", "--epochs", "1+1"])
    assert str(e.value) == bench_gpu.NO_ACCELERATOR and "\n" not in str(e.value)


def test_gpu_study_arguments_and_mfu():
    from handjax.bench import gpu as bench_gpu
    from handjax import config as configs
    a = bench_gpu.parse_args([])
    assert (a.image_size, a.epochs1, a.epochs2) == (224, 10, 10)
    spec = configs.parse(bench_gpu.study_config(a))
    assert len(spec.cells) == 12
    assert all(c.data.image_size == 224 and c.train.epochs2 == 10 for c in spec.cells.values())
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--epochs", "ten"])
    # 1e12 FLOPs an epoch, 10 epochs in 20 s = 0.5 TFLOP/s of a 1 TFLOP/s peak
    assert bench_gpu.phase2_mfu({"flops_phase2": 1e12, "epochs2_s": 20.0}, 10, 1.0) == 0.5
    assert bench_gpu.phase2_mfu({"epochs2_s": 20.0}, 10, 1.0) is None


@pytest.mark.slow  # trains the tiny cell at R = 1 and R = 2
def test_bench_repeats_measures_both_in_one_run(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["repeats", "--quick", "--repeats", "2", "--epochs", "1+1",
                       "--model", "vgg16", "--json", str(out)]) == 0
    import json
    rep = json.loads(out.read_text())["repeats"]
    assert rep["R=2"]["fit_s"] > 0 and rep["R=1"]["fit_s"] > 0
    assert rep["fit_ratio"] == pytest.approx(rep["R=2"]["fit_s"] / rep["R=1"]["fit_s"])
    assert "repeats 2 against 1: training" in capsys.readouterr().out


def test_max_probability_change_is_the_largest_cnn_difference(tmp_path):
    """``protocol --dtype bfloat16`` reports float32's and bfloat16's runs apart by the largest
    absolute difference of their CNN probabilities, row by row, read from two
    ``predictions.csv`` as a run writes them (calibrated and SVM probabilities left out);
    predictions of other photos or other folds are refused."""
    from handjax.bench.protocol import max_probability_change
    from handjax.evaluation import Predictions, PredictionsError, write_predictions
    rng = np.random.default_rng(0)
    n = 6
    p, q = rng.dirichlet([1, 1, 1], size=n), rng.dirichlet([1, 1, 1], size=n)

    def write(path, cnn, other, files=None, fold=None):
        probs = {"cnn": cnn, "cnn_calibrated": other, "svm": other}
        preds = Predictions(
            file=np.array(files or [f"photo{i}.png" for i in range(n)], dtype=object),
            subject=np.array([f"s{i}" for i in range(n)], dtype=object),
            fold=np.array(fold or [i % 3 for i in range(n)]), label=np.arange(n) % 3,
            probs=probs, pred={r: v.argmax(-1) for r, v in probs.items()})
        return write_predictions(path, preds)

    far = rng.dirichlet([1, 1, 1], size=n)
    a = write(tmp_path / "a.csv", p, np.full((n, 3), 1 / 3))
    b = write(tmp_path / "b.csv", q, far)   # calibrated and SVM columns far apart
    assert max_probability_change(a, b) == pytest.approx(np.abs(p - q).max(), abs=1e-15)
    assert max_probability_change(a, a) == 0.0
    assert max_probability_change(a, b, "svm") == pytest.approx(np.abs(far - 1 / 3).max(),
                                                                 abs=1e-15)
    other_photos = write(tmp_path / "c.csv", q, far, files=[f"x{i}.png" for i in range(n)])
    other_folds = write(tmp_path / "d.csv", q, far, fold=[0] * n)
    for c in (other_photos, other_folds):
        with pytest.raises(PredictionsError, match="not cnn predictions of the same photos"):
            max_probability_change(a, c)
    (tmp_path / "e.csv").write_text("file,fold,p_cnn_normal\nx,0,1\n")
    with pytest.raises(PredictionsError, match="e.csv: missing column subject"):
        max_probability_change(a, tmp_path / "e.csv")
