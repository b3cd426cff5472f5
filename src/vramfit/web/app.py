"""The FastAPI app behind `vramfit serve`: a thin HTTP layer over the Python API, and the page that calls it.

Routes (the OpenAPI schema at /openapi.json, rendered at /docs by a local script: FastAPI's own Swagger UI
and ReDoc pages load their code from a CDN, so they are switched off):

    GET  /                    the page (static/index.html; its JS and CSS are served from /static, no CDN)
    GET  /api/catalog?q=      catalog search (vramfit.model.catalog.search_catalog)
    GET  /api/gpus            the GPU catalog (vramfit.gpus): sold and usable bytes, for the page's verdicts
    POST /api/estimate        EstimateRequest -> vramfit.result.Estimate
    POST /api/fit             FitRequest -> the fewest GPUs of each kind (vramfit.search.fit)
    POST /api/check           EstimateRequest -> does it fit settings.gpu (vramfit.search.check)
    POST /api/max-batch       LargestRequest -> the largest batch that fits (vramfit.search.max_batch)
    POST /api/max-context     LargestRequest -> the longest context that fits (vramfit.search.max_context)
    POST /api/plan            PlanRequest -> parallel layouts of N GPUs, best first (vramfit.search.plan)
    POST /api/sweep           SweepRequest -> the estimates at every point of a grid (vramfit.sweep)

A request names a catalog id or carries a pasted config.json; never a path on the server, and never the
network unless the operator started the server with --allow-network. Bodies are capped at `max_body_bytes`
(a config.json is a few KiB; 1 MiB by default). vramfit errors become HTTP 422 (404 for an unknown model)
with the same one-line message the CLI prints.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from vramfit.errors import InvalidSetting, MissingExtra, ModelNotFound, VramfitError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("the web app needs FastAPI and uvicorn; install them with: pip install 'vramfit[web]'") \
        from error

from vramfit.estimate import estimate, sweep
from vramfit.model.loaded import Model
from vramfit.result import Estimate
from vramfit.web.schemas import (
    CatalogModel,
    CheckOut,
    EstimateRequest,
    FitRequest,
    GPUCapacity,
    GpuFitOut,
    LargestOut,
    LargestRequest,
    ModelRequest,
    PlanOut,
    PlanRequest,
    SweepRequest,
)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_BODY_BYTES = 1024**2
# The slowest legitimate request measured (fit over every GPU up to 1024 of them, DeepSeek-V3 training) takes
# about 6 s on one core; 30 s leaves room for a loaded machine and stops a pathological one.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(*, allow_network: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> FastAPI:
    """The app; `allow_network` lets requests name hub ids outside the catalog (read from the hub);
    a request still running after `request_timeout_s` gets 503 (see `Deadline`)."""
    app = FastAPI(title="vramfit", version=_version(), docs_url=None, redoc_url=None,
                  description="Exact, explained per-GPU memory of LLM inference and training.")
    app.state.allow_network = allow_network
    app.add_exception_handler(VramfitError, _vramfit_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app)
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    app.add_middleware(Deadline, seconds=request_timeout_s)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vramfit")
    except PackageNotFoundError:
        return "0"


def _routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """The OpenAPI docs rendered by static/docs.js (FastAPI's Swagger UI would load from a CDN)."""
        return FileResponse(STATIC / "docs.html")

    @app.get("/api/catalog", response_model=list[CatalogModel], summary="Search the built-in model catalog")
    def catalog(q: str = "", limit: int = 50) -> list[CatalogModel]:
        from vramfit.model.catalog import search_catalog

        return [CatalogModel(id=e.id, source=e.source, upstream=e.upstream, aliases=list(e.aliases),
                             notes=e.notes) for e in search_catalog(q[:200])[:max(0, min(limit, 500))]]

    @app.get("/api/gpus", response_model=list[GPUCapacity], summary="GPUs in the catalog and their memory")
    def gpu_list() -> list[GPUCapacity]:
        from vramfit import gpus

        return [GPUCapacity(id=g.id, name=g.name, memory_bytes=g.memory_bytes, usable_bytes=g.usable_bytes)
                for g in gpus.CATALOG]

    @app.post("/api/estimate", response_model=Estimate, summary="Per-GPU memory, component by component")
    def estimate_route(body: EstimateRequest, request: Request) -> Estimate:
        return estimate(_model(body, request), body.settings)

    @app.post("/api/sweep", response_model=list[Estimate],
              summary="Estimates at every combination of the axes' values (a table or a plot)")
    def sweep_route(body: SweepRequest, request: Request) -> list[Estimate]:
        return sweep(_model(body, request), body.settings, **body.axes)

    _search_routes(app)


def _search_routes(app: FastAPI) -> None:
    """fit, max-batch, max-context and plan: vramfit.search on the request's model and settings."""
    from vramfit import search

    @app.post("/api/fit", response_model=list[GpuFitOut], summary="Fewest GPUs of each kind that fit, and how")
    def fit_route(body: FitRequest, request: Request) -> list[GpuFitOut]:
        from vramfit import gpus

        chosen = [gpus.lookup(name) for name in body.gpus] if body.gpus is not None else list(gpus.CATALOG)
        found = search.fit(_model(body, request), body.settings, gpus=chosen, max_gpus=body.max_gpus)
        return [GpuFitOut.of(f) for f in found]

    @app.post("/api/check", response_model=CheckOut, summary="Does it fit the GPU settings.gpu names?")
    def check_route(body: EstimateRequest, request: Request) -> CheckOut:
        return CheckOut.of(search.check(_model(body, request), body.settings))

    @app.post("/api/max-batch", response_model=LargestOut, summary="Largest batch that fits settings.gpu")
    def max_batch_route(body: LargestRequest, request: Request) -> LargestOut:
        limit = {"limit": body.limit} if body.limit else {}
        return LargestOut.of(search.max_batch(_model(body, request), body.settings, **limit))

    @app.post("/api/max-context", response_model=LargestOut, summary="Longest context that fits settings.gpu")
    def max_context_route(body: LargestRequest, request: Request) -> LargestOut:
        return LargestOut.of(search.max_context(_model(body, request), body.settings, limit=body.limit))

    @app.post("/api/plan", response_model=PlanOut, summary="Parallel layouts of N GPUs that fit, best first")
    def plan_route(body: PlanRequest, request: Request) -> PlanOut:
        return PlanOut.of(search.plan(_model(body, request), body.settings, body.gpus, gpu=body.gpu,
                                      global_batch=body.global_batch, top=body.top))


def _model(body: ModelRequest, request: Request) -> Model:
    return load(body, allow_network=request.app.state.allow_network)


def load(body: ModelRequest, *, allow_network: bool) -> Model:
    """The request's model: a pasted config.json, a catalog id, or (network allowed) a hub id; never a path."""
    if body.config is not None:
        return model_from_config(body.config)
    name = (body.model or "").strip()
    from vramfit.model.catalog import find_entry
    from vramfit.model.sources import load_model

    if find_entry(name) is not None:
        return load_model(find_entry(name).id)  # type: ignore[union-attr]
    if not allow_network:
        raise ModelNotFound(f"model: {name!r} is not in the built-in catalog, and this server reads no hub "
                            "models (start it with --allow-network); paste its config.json instead")
    if not _HUB_ID.match(name) or ".." in name or Path(name).exists():
        raise InvalidSetting(f"model: {name!r} is not a hub id such as org/name; paths are never read here")
    return load_model(name, allow_network=True)


def model_from_config(config: dict[str, Any]) -> Model:
    """A pasted config.json, read by the same readers as a file (vramfit.model.hf_config)."""
    from vramfit.model.hf_config import read_architecture

    name = str(config.get("_name_or_path") or "pasted config.json")[:200]
    return Model(name=name, architecture=read_architecture(config), source="config", config=config)


async def _vramfit_error(request: Request, error: Exception) -> JSONResponse:
    status = 404 if isinstance(error, ModelNotFound) else 422
    return JSONResponse({"detail": str(error), "error": type(error).__name__}, status_code=status)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_body_bytes`, by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _too_large(send, self.max_body_bytes)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_body_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail": "request body over {limit} bytes; send a catalog id or a config.json"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Deadline:
    """ASGI middleware: a request that has not started its response after `seconds` gets 503 with a message,
    instead of holding its client (and a worker) without an answer. The work itself runs in Starlette's
    thread pool, where it cannot be interrupted: it finishes in the background and its response is dropped.
    What bounds that work is the validation (layer counts, sizes, search limits), not this deadline."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "expired": False}

        async def guarded_send(message: Message) -> None:
            if state["expired"]:
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({task}, timeout=self.seconds)
        if task in done or state["started"]:
            await task
            return
        state["expired"] = True
        task.add_done_callback(lambda t: t.cancelled() or t.exception())   # collected, never logged as lost
        body = json.dumps({"detail": f"the request took longer than {self.seconds:g} s and was abandoned; ask "
                                     "for less (fewer GPUs in fit or plan, a lower search limit)",
                           "error": "Timeout"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
