"""The web page and the API on the locked model: FastAPI routes over one micro-batcher.

    app = create_app(load_model(workdir))     # served by uvicorn (``python -m handjax.serve``)

Routes: ``GET /`` (the page), ``GET /card`` (the model card page), ``POST /predict``
(multipart field ``file``), ``GET /model``, ``GET /healthz``, ``GET /gradcam/{id}.png``,
``GET /docs`` and ``GET /openapi.json`` (FastAPI's). Every error is JSON
``{"error": "one plain sentence"}`` with a 4xx status (503 with ``Retry-After`` when the queue
is full or a request ran past its timeout); an unexpected failure is a 500 with the same shape,
its traceback only in the server's log.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from handjax.data import DataError, overlay
from handjax.evaluation.model_card import limitations
from handjax.model.locked import decision_value, display_names
from handjax.serve import uploads
from handjax.serve.batcher import MicroBatcher, QueueFull, Stopped
from handjax.serve.limits import BodyLimit
from handjax.serve.uploads import UploadError

PAGES = Path(__file__).parent / "pages"
log = logging.getLogger("handjax.serve")


@dataclass(frozen=True)
class Settings:
    """How the server holds under load (``python -m handjax.serve`` flags)."""

    max_upload_mb: float = 20.0      # bigger bodies are answered 413 before parsing
    max_queue: int = 64              # waiting requests beyond this are answered 503
    max_wait_ms: float = 5.0         # how long a batch stays open for more requests
    timeout_s: float = 30.0          # a request not answered by then gets a 503
    retry_after_s: int = 1           # the Retry-After of every 503
    gradcams_kept: int = 64          # overlay PNGs kept in memory for their links
    decode_threads: int = 4          # uploads decoded (and overlays drawn) at once
    keep_uploads: Path | None = None  # a folder to save accepted uploads into (random names)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# --------------------------------------------------------------------------- schema
class QualityWarning(BaseModel):
    code: str = Field(description="small, dark, bright, blurred or aspect")
    message: str


class PredictionOut(BaseModel):
    probabilities: dict[str, float] = Field(
        description="calibrated probability of each class, as predict --json gives it")
    decisions: dict[str, str | int] = Field(
        description="every locked decision rule, as predict --json gives it: the class for "
                    "argmax and mec, 1 (the task's positive call) or 0 per locked threshold")
    quality: list[QualityWarning]
    gradcam: str = Field(description="link to the Grad-CAM overlay PNG (kept a while)")
    width: int
    height: int
    caveats: list[str]


class ErrorOut(BaseModel):
    error: str = Field(description="what went wrong, in one plain sentence")


_ERRORS = {code: {"model": ErrorOut} for code in (400, 413, 415, 422, 503)}


# --------------------------------------------------------------------------- the model side
class PngStore:
    """The last ``size`` overlay PNGs under random ids (memory stays bounded)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, png: bytes) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = png
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._items.get(key)


def run_batch(model, images) -> list[tuple[np.ndarray, dict, np.ndarray]]:
    """One forward pass (and one Grad-CAM pass, for the argmax class) over a micro-batch of
    prepared images: ``(probabilities [C], {rule: int}, cam [h, w])`` per image, as
    ``predict`` computes them."""
    x = np.stack(images)
    probs = np.asarray(model.probabilities(x))
    decisions = {rule: np.asarray(v).reshape(-1) for rule, v in model.decide(probs).items()}
    cams = np.asarray(model.grad_cam(x, decisions["argmax"]))
    return [(probs[i], {r: int(v[i]) for r, v in decisions.items()}, cams[i])
            for i in range(len(images))]


def caveats(card: dict) -> list[str]:
    """The page's caveats in plain words, from the model card: not a medical device; random
    weights and synthetic data where so; how many photos of how many people it learnt from.
    (The card's own, more technical caveats are on the card page.)"""
    data = (card.get("cv_figures") or {}).get("data") or {}
    out = ["Not a medical device: this is a research tool, not a diagnosis. See a doctor "
           "about any concern for your hands."]
    words = {
        "random_weights": "Random weights: the network did not start from ImageNet training, "
                          "so its answers show only that the software runs.",
        "synthetic": "Synthetic data: it learnt from computer-drawn hands whose disease signs "
                     "are medically meaningless."}
    out += [words[kind] for kind in limitations(card.get("weights"), data) if kind in words]
    people, photos = data.get("n_subjects"), data.get("n")
    if people or photos:
        out.append(f"Trained on {photos or 'an unknown number of'} photos of "
                   f"{people or 'an unknown number of'} people; it has not been tested on "
                   "anyone else.")
    return out


# --------------------------------------------------------------------------- the app
def run_plots(workdir) -> dict[str, bytes]:
    """The run's plot PNGs (``<workdir>/*.png``: reliability, ROC, decision curve, ...) by
    file name, read once: the card page shows them, and no client-given name reaches a path."""
    if workdir is None:
        return {}
    return {p.name: p.read_bytes() for p in sorted(Path(workdir).glob("*.png")) if p.is_file()}


def create_app(model, settings: Settings = Settings(), plots: dict[str, bytes] | None = None
               ) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``LockedModel`` or anything with its interface);
    ``plots`` are PNGs by name for the card page (:func:`run_plots`).

    The model is warmed up (compiled) when the app starts, before it accepts requests; the
    batcher stops (finishing what is queued) when it shuts down.
    """
    plots = dict(plots or {})
    # Keep uploads in memory: Starlette spools a file part over 1 MB to a temporary file.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size,
                                         settings.max_upload_bytes + 1)
    batcher = MicroBatcher(lambda images: run_batch(model, images), model.batch_size,
                           settings.max_queue, settings.max_wait_ms / 1000)
    store = PngStore(settings.gradcams_kept)
    # Decoding and drawing get a few threads of their own (not Starlette's 40): enough to keep
    # the model fed, and few enough that they neither crowd its cores nor each grow their
    # own memory arena. Made in the lifespan: a limiter belongs to one event loop.
    cpu_work = {}
    names = list(model.classes)
    notes = caveats(model.card)

    @asynccontextmanager
    async def lifespan(app):
        blank = np.zeros((1, model.image_size, model.image_size, 3), np.uint8)
        await run_in_threadpool(run_batch, model, list(blank))  # compile before serving
        cpu_work["limiter"] = anyio.CapacityLimiter(settings.decode_threads)
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="handjax", lifespan=lifespan, version="1",
                  description="Hand-photo triage with the locked model of a handjax run. "
                              "A research tool, not a medical device.")
    app.state.batcher, app.state.store, app.state.in_flight = batcher, store, 0
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 64 * 1024)
    _errors(app, settings)
    app.mount("/static", StaticFiles(directory=PAGES / "static"), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((PAGES / "index.html").read_text())

    @app.get("/card", response_class=HTMLResponse, include_in_schema=False)
    def card_page():
        return HTMLResponse((PAGES / "card.html").read_text())

    @app.get("/model", summary="The model card")
    def model_card() -> dict[str, Any]:
        return {"classes": names, "display_names": display_names(names),
                "image_size": int(model.image_size), "batch_size": int(model.batch_size),
                "caveats": notes, "plots": list(plots), "card": model.card}

    @app.get("/model/plots/{name}", response_class=Response, summary="A plot of the run",
             responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}})
    def plot(name: str):
        if name not in plots:
            raise HTTPException(404, f"The run has no plot named {name!r}; GET /model lists "
                                     "them.")
        return Response(plots[name], media_type="image/png")

    @app.get("/healthz", summary="Liveness and queue depth")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "in_flight": app.state.in_flight, "queue": batcher.depth,
                "max_queue": batcher.max_queue,
                "batch_size": batcher.batch_size, "batches": batcher.batches,
                "answered": batcher.items}

    @app.get("/gradcam/{key}.png", response_class=Response, summary="A Grad-CAM overlay",
             responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}})
    def gradcam(key: str):
        png = store.get(key)
        if png is None:
            raise HTTPException(404, "That Grad-CAM overlay is no longer kept; upload the "
                                     "photo again.")
        return Response(png, media_type="image/png")

    @app.post("/predict", response_model=PredictionOut, responses=_ERRORS,
              summary="Classify one hand photo")
    async def predict(file: UploadFile = File(description="the photo (JPEG, PNG, ...)")):
        app.state.in_flight += 1
        try:   # on timeout the batcher skips the request if its batch has not started
            return await asyncio.wait_for(_predict(await file.read()), settings.timeout_s)
        except asyncio.TimeoutError:
            raise Busy(f"The server did not finish within {settings.timeout_s:g} s; it is "
                       "busy, try again shortly.") from None
        finally:
            app.state.in_flight -= 1

    async def _predict(raw: bytes) -> PredictionOut:
        photo, image, warnings = await anyio.to_thread.run_sync(
            _accept, model, raw, settings, limiter=cpu_work["limiter"])
        probs, rules, cam = await asyncio.wrap_future(batcher.submit(image))
        png = await anyio.to_thread.run_sync(
            lambda: uploads.png_bytes(overlay.heat_overlay(photo.display, cam)),
            limiter=cpu_work["limiter"])
        return PredictionOut(
            probabilities={n: float(p) for n, p in zip(names, probs)},
            decisions={rule: decision_value(model, rule, v) for rule, v in rules.items()},
            quality=warnings, gradcam=f"/gradcam/{store.put(png)}.png",
            width=photo.width, height=photo.height, caveats=notes)

    return app


class Busy(Exception):
    """Answered 503 with Retry-After: the queue is full or a request ran out of time."""


def _accept(model, raw: bytes, settings: Settings):
    """An upload -> (Photo, the model's input, quality warnings), or an UploadError."""
    uploads.check_bytes(raw, settings.max_upload_bytes)
    photo = uploads.open_photo(raw)
    try:
        image = model.prepare(raw, name="upload")
    except DataError as e:  # what the model's decoder refuses that the checks above let by
        raise UploadError(422, f"The photo cannot be used: {_reason(e)}.") from None
    if settings.keep_uploads is not None:
        ext = {"JPEG": "jpg"}.get(photo.format, photo.format.lower())
        (settings.keep_uploads / f"{uuid.uuid4().hex}.{ext}").write_bytes(raw)
    return photo, image, uploads.quality_warnings(photo)


def _reason(e: Exception) -> str:
    """A DataError's message without the leading "<file>: " (an upload has no file name)."""
    head, sep, tail = str(e).partition(": ")
    return (tail if sep and " " not in head else str(e)).rstrip(".")


def _errors(app: FastAPI, settings: Settings) -> None:
    """Every error as ``{"error": sentence}``; tracebacks go to the log, never to a client."""
    retry = {"Retry-After": str(settings.retry_after_s)}

    def error(status: int, message: str, headers=None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(UploadError)
    async def _upload(request: Request, e: UploadError):
        return error(e.status, e.message)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, e: QueueFull):
        return error(503, f"The server is busy ({e}); try again in "
                          f"{settings.retry_after_s} s.", retry)

    @app.exception_handler(Busy)
    async def _busy(request: Request, e: Busy):
        return error(503, str(e), retry)

    @app.exception_handler(Stopped)
    async def _stopping(request: Request, e: Stopped):
        return error(503, "The server is shutting down; try again shortly.", retry)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return error(422, "Send the photo as a multipart/form-data upload in a field named "
                          "'file'.")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        messages = {404: f"There is no page at {request.url.path}; the API is described at "
                         "/docs.",
                    405: f"{request.method} is not allowed on {request.url.path}; see /docs.",
                    400: "The request body could not be read as a multipart form; send the "
                         "photo in a field named 'file'."}
        message = e.detail if isinstance(e.detail, str) and e.detail.endswith(".") else (
            messages.get(e.status_code, f"{e.detail}."))
        return error(e.status_code, message, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "The server hit an unexpected error, which it has logged; try "
                          "again or report it.")
