"""The server in process: the micro-batcher, upload checks and quality warnings (against
independent references), the API's answers on a stand-in model, and on one trained smoke run
``/predict`` equal to ``predict --json`` with no recompilation while serving.

The real server on loopback (a browser, 16 client threads, SIGTERM) is test_serve_browser.py.
"""
import contextlib
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFilter

from serve_helpers import (FakeModel, bad_uploads, encode, hands, photo_bytes,
                           softmax)
from handjax import data
from handjax.data import overlay
from handjax.serve import uploads
from handjax.serve.app import Settings, create_app
from handjax.serve.batcher import MicroBatcher, QueueFull, Stopped

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with:DeprecationWarning")
TestClient = pytest.importorskip("fastapi.testclient").TestClient


def wait_until(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.005)


def one_sentence(message: str) -> bool:
    """A capitalised line ending in one full stop, no traceback, no second sentence."""
    return (re.fullmatch(r"[A-Z][^\n]*\.", message) is not None and ". " not in message
            and "Traceback" not in message)


# --------------------------------------------------------------------------- the batcher
class GatedRun:
    """``run_batch`` that records each batch and holds it until ``gate`` is set."""

    def __init__(self):
        self.gate, self.entered, self.batches = threading.Event(), threading.Event(), []

    def __call__(self, items):
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(10)
        if "boom" in items:
            raise RuntimeError("boom")
        return [x * 10 for x in items]


def test_batcher_gathers_waiting_requests_into_full_batches():
    run = GatedRun()
    b = MicroBatcher(run, batch_size=4, max_queue=64, max_wait_s=0.0)
    b.start()
    first = b.submit(0)
    run.entered.wait(5)                     # the worker holds batch [0] ...
    rest = [b.submit(i) for i in range(1, 13)]  # ... while twelve more arrive
    run.gate.set()
    assert [f.result(5) for f in [first, *rest]] == [10 * i for i in range(13)]
    b.stop()
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert (b.batches, b.items) == (4, 13)


def test_full_queue_refuses_and_stop_finishes_what_is_queued():
    run = GatedRun()
    b = MicroBatcher(run, batch_size=2, max_queue=3, max_wait_s=0.0)
    b.start()
    running = b.submit(0)
    run.entered.wait(5)
    queued = [b.submit(i) for i in (1, 2, 3)]
    with pytest.raises(QueueFull):
        b.submit(4)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    wait_until(lambda: not b._accepting)
    with pytest.raises(Stopped):
        b.submit(5)
    run.gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert [f.result(0) for f in [running, *queued]] == [0, 10, 20, 30]


def test_a_failed_batch_fails_its_requests_only_and_cancelled_ones_are_skipped():
    run = GatedRun()
    b = MicroBatcher(run, batch_size=1, max_queue=8, max_wait_s=0.0)
    b.start()
    bad = b.submit("boom")
    run.entered.wait(5)
    dropped, good = b.submit("never"), b.submit(7)
    assert dropped.cancel()                  # e.g. its request ran past its timeout
    run.gate.set()
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(5)
    assert good.result(5) == 70
    b.stop()
    assert ["never"] not in run.batches


# --------------------------------------------------------------------------- uploads
def test_laplacian_variance_is_scipys_laplacian():
    from scipy import ndimage
    gray = np.random.default_rng(0).uniform(0, 255, (40, 57))
    expected = ndimage.laplace(gray)[1:-1, 1:-1].var()   # interior: no border rule involved
    assert uploads.laplacian_variance(gray) == pytest.approx(expected, rel=1e-12)


def _hand(size=256):
    return data.load_synthetic(n_per_class=1, image_size=size).images[0]


@pytest.mark.parametrize("kind", ["clean", "small", "dark", "bright", "blurred", "aspect"])
def test_quality_warnings(kind):
    hand = _hand().astype(np.float32)
    img = {
        "clean": hand, "small": _hand(96).astype(np.float32),
        "dark": hand * 0.2, "bright": 255 - (255 - hand) * 0.15,
        "blurred": np.asarray(Image.fromarray(hand.astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(3)), np.float32),
        "aspect": np.concatenate([hand] * 3, axis=1),
    }[kind]
    photo = uploads.open_photo(encode(img, "PNG"))
    codes = [w["code"] for w in uploads.quality_warnings(photo)]
    assert codes == ([] if kind == "clean" else [kind])
    assert all(one_sentence(w["message"]) for w in uploads.quality_warnings(photo))


def test_jet_is_matplotlibs():
    import matplotlib
    x = np.arange(256) / 255                  # the colormap's own lookup-table points
    np.testing.assert_allclose(overlay.jet(x), matplotlib.colormaps["jet"](x)[:, :3],
                               atol=1e-6)


def test_overlay_puts_the_heat_of_the_square_on_the_photo_it_letterboxes():
    photo = np.full((32, 64, 3), 128, np.uint8)          # wide: rows 4..12 of a 16 px square
    on_photo, on_padding = np.zeros((16, 16)), np.ones((16, 16))
    on_photo[4:12], on_padding[4:12] = 1.0, 0.0
    hot = np.asarray(overlay.heat_overlay(photo, on_photo), np.float32)
    cold = np.asarray(overlay.heat_overlay(photo, on_padding), np.float32)
    assert hot.shape == cold.shape == (32, 64, 3)
    # jet(1) is dark red and jet(0) dark blue: the heat inside the photo is what shows.
    assert (hot[..., 0] - cold[..., 0]).min() > 40 and (cold[..., 2] - hot[..., 2]).min() > 40


def test_open_photo_keeps_the_original_size_upright():
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90 degrees to view"
    rotated = encode(np.zeros((40, 64, 3)), "JPEG", exif=exif)
    photo = uploads.open_photo(rotated)
    assert (photo.width, photo.height, photo.display.shape) == (40, 64, (64, 40, 3))
    big = uploads.open_photo(encode(np.full((1000, 2000, 3), 90), "JPEG"))
    assert (big.width, big.height, big.format) == (2000, 1000, "JPEG")
    assert max(big.display.shape[:2]) <= uploads.DISPLAY_SIDE


# --------------------------------------------------------------------------- the API
@contextlib.contextmanager
def fake_client(**settings):
    model = FakeModel()
    with TestClient(create_app(model, Settings(**settings)),
                    raise_server_exceptions=False) as client:
        yield client, model


def post(client, body: bytes, name="hand.png"):
    return client.post("/predict", files={"file": (name, body, "application/octet-stream")})


def test_predict_answers_the_models_probabilities_decisions_and_gradcam():
    body = photo_bytes(1, size=48)
    with fake_client() as (client, _):
        r = post(client, body)
        assert r.status_code == 200, r.text
        out = r.json()
        image = data.decode_image(body, 16).astype(np.float64)   # as the model saw it
        expected = softmax(image.reshape(-1, 3).mean(0) / 32.0)
        np.testing.assert_allclose(list(out["probabilities"].values()), expected, atol=1e-12)
        assert list(out["probabilities"]) == ["normal", "heberden", "ra"]
        assert out["decisions"] == {"argmax": ["normal", "heberden", "ra"][expected.argmax()],
                                    "mec": "ra", "ra_sensitivity": int(expected[2] >= 0.3)}
        assert (out["width"], out["height"]) == (48, 48)
        assert [w["code"] for w in out["quality"]] == ["small"]
        assert out["caveats"][0].startswith("Not a medical device")
        png = client.get(out["gradcam"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (48, 48)


@pytest.mark.parametrize("kind", list(bad_uploads()))
def test_bad_upload_is_a_4xx_sentence_and_the_server_goes_on(kind):
    body, statuses = bad_uploads()[kind]
    with fake_client() as (client, model):
        r = post(client, body)
        assert r.status_code in statuses, r.text
        assert r.headers["content-type"] == "application/json"
        assert list(r.json()) == ["error"] and one_sentence(r.json()["error"]), r.json()
        assert model.calls == [1]                       # only the warm-up reached the model
        assert post(client, photo_bytes(0)).status_code == 200


def test_a_body_over_the_limit_without_a_declared_length_is_413():
    def chunks():                                       # sent chunked: no Content-Length
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(20):
            yield bytes(100_000)
    with fake_client(max_upload_mb=1) as (client, _):
        r = client.post("/predict", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and one_sentence(r.json()["error"])
        assert post(client, photo_bytes(0)).status_code == 200


def test_full_queue_is_503_with_retry_after():
    with fake_client(max_queue=1) as (client, model):
        model.gate = threading.Event()
        image = np.zeros((16, 16, 3), np.uint8)
        busy = client.app.state.batcher.submit(image)        # the worker holds this one
        wait_until(lambda: len(model.calls) == 2)
        queued = client.app.state.batcher.submit(image)      # and the queue holds this one
        r = post(client, photo_bytes(0))
        model.gate.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert one_sentence(r.json()["error"]) and "busy" in r.json()["error"]
        busy.result(5), queued.result(5)
        assert post(client, photo_bytes(0)).status_code == 200


def test_request_past_its_timeout_is_503_and_not_computed_later():
    with fake_client(timeout_s=0.2) as (client, model):
        model.gate = threading.Event()
        image = np.zeros((16, 16, 3), np.uint8)
        busy = client.app.state.batcher.submit(image)        # the worker holds this one
        wait_until(lambda: len(model.calls) == 2)
        r = post(client, photo_bytes(0))                      # queued behind it, times out
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "0.2 s" in r.json()["error"] and one_sentence(r.json()["error"])
        model.gate.set()
        busy.result(5)
        client.app.state.batcher.submit(image).result(5)      # queued after the timed-out one
        assert model.calls == [1, 1, 1]   # warm-up, busy, the last: the timed-out one skipped


def test_a_model_failure_is_a_json_500_without_traceback():
    with fake_client() as (client, model):
        model.fail = True
        r = post(client, photo_bytes(0))
        assert r.status_code == 500 and list(r.json()) == ["error"]
        assert "Traceback" not in r.text and "fake model" not in r.text
        model.fail = False
        assert post(client, photo_bytes(0)).status_code == 200


def test_concurrent_requests_share_forward_passes():
    with fake_client() as (client, model):
        model.gate = threading.Event()
        photos = [photo_bytes(i % 6) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, client, body) for body in photos]
            # Hold the first batch until all eight are either in it or queued behind it.
            wait_until(lambda: sum(model.calls[1:]) + client.app.state.batcher.depth == 8)
            model.gate.set()
            assert [f.result(10).status_code for f in futures] == [200] * 8
        batches = model.calls[1:]                       # [0] was the warm-up
        assert sum(batches) == 8 and len(batches) <= 3 and max(batches) <= model.batch_size


def test_kept_uploads_get_random_names_never_the_clients(tmp_path):
    keep = tmp_path / "kept"
    keep.mkdir()
    body = photo_bytes(0, fmt="JPEG")
    with fake_client(keep_uploads=keep) as (client, _):
        assert post(client, body, name="../../evil.png").status_code == 200
        assert post(client, b"not a photo", name="bad.png").status_code == 415
    (saved,) = keep.iterdir()
    assert re.fullmatch(r"[0-9a-f]{32}\.jpg", saved.name) and saved.read_bytes() == body
    assert not list(tmp_path.rglob("evil*"))


def test_pages_health_schema_and_unknown_paths():
    with fake_client() as (client, _):
        page = client.get("/")
        assert page.status_code == 200 and 'capture="environment"' in page.text
        assert client.get("/static/app.js").status_code == 200
        assert "model card" in client.get("/card").text.lower()
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["max_queue"] == 64
        schema = client.get("/openapi.json").json()
        assert {"/predict", "/model", "/healthz"} <= set(schema["paths"])
        form = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        ref = form["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
        assert list(schema["components"]["schemas"][ref]["properties"]) == ["file"]
        answers = schema["paths"]["/predict"]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(answers)
        for path, method in (("/nope", "get"), ("/predict", "get")):
            r = getattr(client, method)(path)
            assert r.status_code in (404, 405) and one_sentence(r.json()["error"])


# --------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def served(smoke_run):
    from handjax.model.locked import load_model
    from handjax.serve.app import run_plots
    workdir = smoke_run
    model = load_model(workdir)
    with TestClient(create_app(model, plots=run_plots(workdir))) as client:
        yield client, model, workdir


@pytest.mark.slow  # trains the smoke run (shared with test_serve_browser.py)
def test_predict_equals_predict_json(served, tmp_path, capsys):
    from handjax import predict
    client, _, workdir = served
    exif = Image.Exif()
    exif[0x0112] = 6
    photos = {"hand.png": photo_bytes(0), "hand.jpg": photo_bytes(3, fmt="JPEG"),
              "rotated.jpg": encode(hands()[1][12:52], "JPEG", exif=exif)}
    for name, body in photos.items():
        (tmp_path / name).write_bytes(body)
    assert predict.main(["--workdir", str(workdir), "--json", "--out", str(tmp_path / "cams"),
                         *(str(tmp_path / n) for n in photos)]) == 0
    offline = json.loads(capsys.readouterr().out)["predictions"]
    for name, want in zip(photos, offline):
        got = post(client, photos[name], name=name).json()
        # Exactly: one photo alone in the server's padded batch runs the same compiled program
        # as predict's batch of three (the model pads both to 8; rows do not mix).
        assert got["probabilities"] == want["probabilities"]
        assert list(got["probabilities"]) == ["normal", "heberden", "ra"]
        assert got["decisions"] == want["decisions"]


@pytest.mark.slow  # trains the smoke run
def test_serving_never_recompiles(served):
    client, model, _ = served
    photos = [photo_bytes(i % 6) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:     # batches of varying fill, one compiled shape
        codes = list(pool.map(lambda body: post(client, body).status_code, photos))
    assert codes == [200] * 12
    assert model._forward._cache_size() == 1 and model._cam_forward._cache_size() == 1


@pytest.mark.slow  # trains the smoke run
def test_model_card_caveats_and_plots(served):
    client, model, _ = served
    info = client.get("/model").json()
    assert info["card"] == json.loads(json.dumps(model.card))
    assert info["classes"] == ["normal", "heberden", "ra"] and info["image_size"] == 32
    text = " ".join(info["caveats"])
    for words in ("Not a medical device", "Random weights", "Synthetic data",
                  "30 photos of 15 people"):
        assert words in text
    assert "reliability.png" in info["plots"]
    png = client.get("/model/plots/reliability.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/model/plots/..%2Fconfig.json").status_code == 404


# --------------------------------------------------------------------------- the command
def test_only_loopback_addresses_count_as_loopback():
    from handjax.serve.__main__ import is_loopback
    assert all(map(is_loopback, ("127.0.0.1", "127.8.0.2", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.168.1.4", "::", "example.org")))


def test_a_missing_run_is_one_line(tmp_path, capsys):
    from handjax.serve.__main__ import main
    assert main(["--workdir", str(tmp_path / "norun")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("handjax: loading the locked model of")   # what it starts
    (line,) = lines[1:]
    assert line.startswith("handjax: error:") and "norun" in line
