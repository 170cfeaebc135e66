"""``python -m handjax.bench serve``: the server under load, beside offline prediction.

    python -m handjax.bench serve                        # trains the smoke cell first (~30 s)
    python -m handjax.bench serve --workdir runs/vgg19_custom --requests 1000

Starts ``python -m handjax.serve`` on a free loopback port, then for 1, 4 and 16 concurrent
clients (threads, one keep-alive connection each) sends ``--requests`` photos per level
(bounded by ``--seconds`` per level) and prints photos/s, p50/p99 latency, the 503 count and
any other failure; the server's resident memory (RSS) before the first and after the last
request; and, in this process once the server has stopped, the offline throughput of the same
locked model on the same photos (decode, probabilities, decisions, Grad-CAM in full batches:
what ``predict`` does, without writing files). Targets: at 16 clients at least 0.8x offline,
no failure other than 503, RSS growth under 5%.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from handjax import console

LEVELS = (1, 4, 16)


# --------------------------------------------------------------------------- the client
def multipart(photo: bytes, filename: str = "photo.jpg") -> tuple[str, bytes]:
    """``(content type, body)`` of a multipart form holding ``photo`` as field ``file``."""
    boundary = "handjax-bench-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    return (f"multipart/form-data; boundary={boundary}",
            head.encode() + photo + f"\r\n--{boundary}--\r\n".encode())


class Client:
    """One keep-alive HTTP connection to the server (reconnects when the server closed it)."""

    def __init__(self, port: int, timeout: float = 120.0):
        self.port, self.timeout = port, timeout
        self.conn = None

    def post(self, photo: bytes, filename: str = "photo.jpg") -> tuple[int, dict, dict]:
        """POST /predict -> (status, headers, JSON body)."""
        ctype, body = multipart(photo, filename)
        return self.request("POST", "/predict", body, {"Content-Type": ctype})

    def request(self, method: str, path: str, body=None, headers=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.close()
        out = json.loads(data) if r.getheader("Content-Type") == "application/json" else data
        return r.status, dict(r.getheaders()), out

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir, port: int, log, extra=()) -> subprocess.Popen:
    """``python -m handjax.serve`` on ``port``; returns once /healthz answers (or raises)."""
    proc = subprocess.Popen([sys.executable, "-m", "handjax.serve", "--workdir", str(workdir),
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT)
    wait_healthy(proc, port)
    return proc


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
        try:
            client = Client(port, timeout=5)
            if client.request("GET", "/healthz")[0] == 200:
                client.close()
                return
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the server did not answer /healthz within {timeout:.0f} s")


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- the load
def load_level(port: int, photos: list[bytes], clients: int, requests: int,
               seconds: float) -> dict:
    """``clients`` threads share ``requests`` POSTs (stopping after ``seconds``); photos/s
    counts the 200 answers over the level's wall time."""
    lock, next_index = threading.Lock(), [0]
    latencies, statuses, failures = [], [], []
    deadline = time.monotonic() + seconds

    def worker():
        client = Client(port)
        while time.monotonic() < deadline:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= requests:
                break
            t = time.perf_counter()
            try:
                status = client.post(photos[i % len(photos)])[0]
            except (OSError, http.client.HTTPException) as e:   # a dropped connection
                client.close()
                failures.append(type(e).__name__)
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                statuses.append(status)
        client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = statuses.count(200)
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(statuses) + len(failures), "ok": ok,
            "photos_per_s": ok / wall, "p50_ms": float(np.percentile(lat, 50)) if ok else None,
            "p99_ms": float(np.percentile(lat, 99)) if ok else None,
            "busy_503": statuses.count(503),
            "other": len(failures) + sum(s not in (200, 503) for s in statuses),
            "wall_s": wall}


def offline_throughput(workdir, photos: list[bytes], rounds: int = 2) -> float:
    """Photos/s of the locked model on ``photos`` the way predict runs them: every photo
    decoded, then probabilities, decisions and Grad-CAM in full padded batches (after one
    warm-up pass that compiles)."""
    from handjax.model.locked import load_model
    model = load_model(workdir)

    def once():
        images = np.stack([model.prepare(p) for p in photos])
        probs = model.probabilities(images)
        model.grad_cam(images, model.decide(probs)["argmax"])

    once()
    start = time.perf_counter()
    for _ in range(rounds):
        once()
    return rounds * len(photos) / (time.perf_counter() - start)


def bench_photos(n: int, size: int = 256) -> list[bytes]:
    """``n`` synthetic hands as JPEG bytes (phone-photo-like input, decoded per request)."""
    import io
    from PIL import Image
    from handjax import data
    ex = data.load_synthetic(n_per_class=max(1, -(-n // 3)), image_size=size)
    out = []
    for img in ex.images[:n]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def smoke_workdir(root: Path) -> Path:
    """Trains the smoke cell (VGG16, 32 px, random weights) into ``root/smoke``."""
    from handjax import config as configs
    from handjax.train import run
    workdir = root / "smoke"
    run.run(configs.parse_run(configs.cell("vgg16", "categorical", "smoke")), workdir)
    return workdir


# --------------------------------------------------------------------------- report
def table(rows: list[dict], offline: float, rss: tuple) -> str:
    lines = ["clients  requests  photos/s  p50 ms  p99 ms   503  other  photos/batch",
             *(f"{r['clients']:>7}  {r['requests']:>8}  {r['photos_per_s']:>8.1f}  "
               f"{_ms(r['p50_ms'])}  {_ms(r['p99_ms'])}  {r['busy_503']:>4}  {r['other']:>5}"
               f"  {r['mean_batch']:>12.1f}" for r in rows),
             f"offline (predict's path, batches of 8): {offline:.1f} photos/s"]
    top = rows[-1]
    lines.append(f"{top['clients']} clients / offline: {top['photos_per_s'] / offline:.2f}x "
                 "(target >= 0.8x)")
    before, after = rss
    if before and after:
        lines.append(f"server RSS: {before:.0f} MiB after a warm-up round, {after:.0f} MiB "
                     f"after {sum(r['requests'] for r in rows)} more requests "
                     f"({100 * (after - before) / before:+.1f}%; target < 5%)")
    return "\n".join(lines)


def _ms(x) -> str:
    return f"{x:>6.0f}" if x is not None else "   n/a"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m handjax.bench serve",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="a finished run (default: train the smoke cell first)")
    p.add_argument("--requests", type=console.int_at_least(1), default=96,
                   help="requests per concurrency level (default 96)")
    p.add_argument("--seconds", type=float, default=120.0,
                   help="time limit per concurrency level (default 120)")
    p.add_argument("--photos", type=console.int_at_least(1), default=24,
                   help="distinct photos, sent in turn (default 24)")
    p.add_argument("--json", help="also write the measurements to this file")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (16 requests per level, 4 photos, 60 s): a check that "
                        "it runs, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.photos, args.seconds = 16, 4, 60.0
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    with tempfile.TemporaryDirectory(prefix="handjax-bench-serve-") as tmp:
        tmp = Path(tmp)
        workdir = Path(args.workdir) if args.workdir else smoke_workdir(tmp)
        photos = bench_photos(args.photos)
        port = free_port()
        with open(tmp / "server.log", "wb") as log:
            proc = start_server(workdir, port, log)
            try:
                # One warm-up round at the top concurrency: threads, buffers and the overlay
                # store reach their working size, so the RSS growth measured after it is what
                # the requests themselves leave behind.
                load_level(port, photos, LEVELS[-1], 2 * LEVELS[-1], args.seconds)
                rss_before = rss_mib(proc.pid)
                rows = []
                for n in LEVELS:
                    before = Client(port).request("GET", "/healthz")[2]
                    rows.append(load_level(port, photos, n, args.requests, args.seconds))
                    after = Client(port).request("GET", "/healthz")[2]
                    rows[-1]["mean_batch"] = ((after["answered"] - before["answered"])
                                              / max(1, after["batches"] - before["batches"]))
                rss_after = rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(120)
        offline = offline_throughput(workdir, photos)
    print(table(rows, offline, (rss_before, rss_after)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"levels": rows, "offline_photos_per_s": offline, "rss_mib": [rss_before, rss_after],
             "photos": len(photos)}, indent=2) + "\n")
    return 0
