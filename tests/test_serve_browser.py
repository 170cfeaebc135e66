"""The real server on loopback: ``python -m handjax.serve`` on the session's trained smoke run,
driven by a headless Chromium (selenium; Debian's ``chromium`` and ``chromium-driver``, which
``.ci/run`` installs), by 16 client threads and by bad uploads; SIGTERM answers what is in
flight. The tests run in file order: the last one stops the server."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_helpers import bad_uploads, photo_bytes, read_until
from handjax.bench.serve import Client, free_port, wait_healthy

pytestmark = pytest.mark.slow  # trains the smoke run (shared with test_serve.py)
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Without these a headless Chromium on a machine without network stalls on start-up.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,1100")


@pytest.fixture(scope="module")
def server(smoke_run, tmp_path_factory):
    """``(port, process)`` of the server on a free loopback port; stopped at the end."""
    workdir = smoke_run
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "handjax.serve", "--workdir", str(workdir),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    try:
        wait_healthy(proc, port, timeout=300)
        proc.log_path = log_path
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "hand.jpg"
    path.write_bytes(photo_bytes(2, size=96, fmt="JPEG"))
    return path


def chromium(profile: Path):
    if not (CHROMIUM and CHROMEDRIVER):
        message = ("chromium and chromedriver are not installed "
                   "(apt-get install chromium chromium-driver)")
        if os.environ.get("HANDJAX_REQUIRE_BROWSER"):   # CI installs them: never skip there
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_a_browser_uploads_a_photo_and_reads_the_class_and_percentage(server, photo,
                                                                       tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    port, _ = server
    expected = Client(port).post(photo.read_bytes(), photo.name)[2]
    top = max(expected["probabilities"], key=expected["probabilities"].get)
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: "Not a medical device" in d.find_element(By.ID, "caveats").text)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: d.find_element(By.ID, "top-pct").text.endswith("%"))
        wait.until(lambda d: d.execute_script(
            "const g = document.getElementById('gradcam'); return g.complete && "
            "g.naturalWidth > 0"))
        shown_class = driver.find_element(By.ID, "top-class").text
        shown_pct = driver.find_element(By.ID, "top-pct").text
        names = {"normal": "Normal", "heberden": "Heberden's nodes",
                 "ra": "Rheumatoid arthritis"}
        assert shown_class == names[top]
        assert shown_pct == f"{100 * expected['probabilities'][top]:.1f}%"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .row")) == 3
        assert "Minimum expected cost" in driver.find_element(By.ID, "decisions").text
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[0] > 500 and pixels.std() > 20           # not one flat colour
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200   # text, bars, heat map

        driver.get(f"http://127.0.0.1:{port}/card")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#figures tbody tr")) > 0)
        assert "AUROC" in driver.find_element(By.ID, "figures").text
        assert "vgg16_categorical_smoke" in driver.find_element(By.ID, "name").text
    finally:
        driver.quit()


def test_bad_uploads_are_4xx_json_and_the_server_keeps_serving(server):
    port, proc = server
    client = Client(port)
    for kind, (body, statuses) in bad_uploads().items():
        status, headers, out = client.post(body, f"{kind}.jpg")
        assert status in statuses, (kind, status, out)
        assert list(out) == ["error"] and "\n" not in out["error"], (kind, out)
    assert client.request("GET", "/healthz")[0] == 200
    assert client.post(photo_bytes(0))[0] == 200 and proc.poll() is None


def test_320_requests_from_16_threads_are_answered_200_or_503(server):
    port, proc = server
    photos = [photo_bytes(i % 6, fmt="JPEG") for i in range(6)]
    answers, lock = [], threading.Lock()

    def client_thread(k):
        client = Client(port)
        for i in range(20):     # any exception (a dropped connection) fails the test
            status, headers, out = client.post(photos[(k + i) % 6])
            with lock:
                answers.append((status, headers.get("Retry-After"), out))
        client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_thread, range(16)))
    statuses = [s for s, _, _ in answers]
    assert len(statuses) == 320 and set(statuses) <= {200, 503}
    assert statuses.count(200) > 0
    assert all(r is not None and "error" in out for s, r, out in answers if s == 503)
    assert all(sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-6)
               for s, _, out in answers if s == 200)
    assert proc.poll() is None


def test_sigterm_answers_the_requests_in_flight_then_exits(server):
    port, proc = server
    photos = [photo_bytes(i % 6, fmt="JPEG") for i in range(32)]
    monitor = Client(port)
    before = monitor.request("GET", "/healthz")[2]["answered"]
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(lambda b: Client(port).post(b)[0], b) for b in photos]
        # SIGTERM once every request is in (answered or in flight) and some are still running.
        while True:
            health = monitor.request("GET", "/healthz")[2]
            if health["in_flight"] + health["answered"] - before >= 32:
                break
            time.sleep(0.01)
        monitor.close()
        proc.send_signal(signal.SIGTERM)
        statuses = [f.result(120) for f in futures]
    assert health["in_flight"] > 0, "every request had finished: the test proved nothing"
    assert statuses == [200] * 32
    # uvicorn shuts down, then re-raises the signal: a supervisor sees an ordinary SIGTERM exit.
    assert proc.wait(120) == -signal.SIGTERM
    log = proc.log_path.read_text()
    assert "Waiting for application shutdown" in log and "Finished server process" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("when, last", [
    (b"loading the locked model", "handjax: error: interrupted"),
    (b"Uvicorn running on", "handjax: stopped (Ctrl-C)"),
], ids=["loading", "serving"])
def test_ctrl_c_stops_the_server_with_one_line_and_130(smoke_run, when, last):
    """Ctrl-C while the model loads, and once it serves: one line, exit 130, no traceback
    (uvicorn raises the signal again after its shutdown: that was Python's traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "handjax.serve", "--workdir",
                             str(smoke_run), "--port", str(free_port())], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = read_until(proc.stdout, when)
        proc.send_signal(signal.SIGINT)
        text = (seen + proc.communicate(timeout=120)[0]).decode()
    finally:
        proc.kill()
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.strip().splitlines()[-1] == last
