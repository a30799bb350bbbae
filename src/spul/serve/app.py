"""The HTTP service: every request goes through the unlearning prompt; requests are batched dynamically."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import spul
from spul.errors import SpulError
from spul.serve.auth import AuthGate, is_admin
from spul.serve.batcher import BatcherBusy, BatcherClosed, DynamicBatcher
from spul.serve.limits import BodyLimit, check_texts, parse_body, unprocessable
from spul.serve.metrics import ServeMetrics
from spul.serve.prompt import Loader, Predictor, Refused, ServedPrompt

log = logging.getLogger("uvicorn.error")  # uvicorn configures it; plain logging otherwise


@dataclass
class ServeConfig:
    """Security, limits and batching settings of one service."""

    token: str | None  # None = no authentication (local use only)
    admin_token: str | None = None  # None = POST /v1/admin/reload is off (SIGHUP still re-reads)
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0
    max_texts: int = 64
    max_text_chars: int = 5_000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queued_texts: int = 4096
    return_probabilities: bool = False  # label probabilities leak the forgotten label (README)
    docs: bool = False  # serve /openapi.json (behind the token)
    reload_on_sighup: bool = False  # needs the main thread (the CLI sets it)
    sighup_pending: threading.Event | None = None  # a SIGHUP that came while the model loaded


class ClassifyRequest(BaseModel):
    """Texts to classify. No other field is accepted: the prompt cannot be turned off."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="the texts to classify", examples=[["a gorgeous, witty movie."]])


class Prediction(BaseModel):
    """One text's label (a label word, or `other`); probabilities only when the server is started with
    --return-probabilities, and never for `other`."""

    label: str
    probabilities: dict[str, float] | None = None


class PromptInfo(BaseModel):
    """Which prompt answered: its id (folder under its root), fingerprint, covered deletion requests."""

    id: str
    fingerprint: str
    created: str | None = None
    method: str | None = None
    kind: str | None = None
    base_model_fingerprint: str | None = None
    requests: list[str] = []


class ClassifyResponse(BaseModel):
    """Predictions in request order, and the prompt that made all of them."""

    predictions: list[Prediction]
    prompt: PromptInfo


class ReloadRequest(BaseModel):
    """Re-read the prompt in use, or switch to another folder under the prompt roots."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, description="prompt folder, absolute or relative to a prompt root")


class ReloadResponse(BaseModel):
    """The prompt before and after the swap."""

    previous: PromptInfo
    current: PromptInfo


def public(predictions: list[dict[str, Any]], probabilities: bool) -> list[dict[str, Any]]:
    """What a response shows of each prediction: the label; probabilities if enabled and not `other`."""
    shown = []
    for p in predictions:
        row = {"label": p["label"]}
        if probabilities and p["label"] != "other" and "probabilities" in p:
            row["probabilities"] = p["probabilities"]
        shown.append(row)
    return shown


class Service:
    """One running service: the prompt in use, the batcher, metrics, reloads."""

    def __init__(self, prompt: ServedPrompt, config: ServeConfig, loader: Loader | None) -> None:
        self.current = prompt
        self.config = config
        self.loader = loader
        self.metrics = ServeMetrics()
        self.metrics.set_prompt(prompt.info, prompt.check)
        self.metrics.queued.set_function(lambda: self.batcher.waiting if self.batcher else 0)
        self.batcher: DynamicBatcher | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.ready = False
        self._reload_lock: asyncio.Lock | None = None

    def _run(self, texts: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One model batch, in the model thread; the prompt is read once so the whole batch uses one."""
        prompt = self.current
        return prompt.predict(texts, batch_size=self.config.max_batch)

    async def start(self) -> None:
        """Start the model thread and the batcher."""
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="spul-model")
        self.batcher = DynamicBatcher(
            self._run,
            self.executor,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            max_queued_texts=self.config.max_queued_texts,
            on_batch=self.metrics.observe_batch,
        )
        self.batcher.start()
        self._reload_lock = asyncio.Lock()
        self.ready = True

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, stop the model thread."""
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    async def classify(self, texts: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Predictions through the batcher (503 while shutting down or when too many texts wait)."""
        if self.batcher is None:
            raise HTTPException(503, detail="the service is not ready")
        try:
            return await self.batcher.submit(texts)
        except BatcherBusy as err:
            self.metrics.busy.inc()
            raise HTTPException(503, detail=str(err), headers={"Retry-After": "1"}) from None
        except BatcherClosed as err:
            raise HTTPException(503, detail=str(err)) from None

    async def reload(self, path: str | None) -> dict[str, Any]:
        """Load the new prompt completely, then swap one reference; in-flight batches keep the old one.

        `path` None re-reads the prompt in use. Anything refused or unloadable is a 4xx with one line.
        """
        if self.loader is None:
            raise HTTPException(501, detail="this service was started without a prompt loader")
        if self._reload_lock is None or self.executor is None:
            raise HTTPException(503, detail="the service is not ready")
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            previous = self.current
            try:
                # in the model thread: it runs between two batches, never beside one
                new = await loop.run_in_executor(self.executor, self.loader, path, previous)
            except Exception as err:
                self.metrics.reloads.labels("failed").inc()
                if isinstance(err, SpulError):
                    reason, code = str(err), 403 if isinstance(err, Refused) else 422
                else:  # corrupt weights and the like: the details go to the log only
                    log.exception("prompt reload failed")
                    reason, code = f"the prompt could not be loaded ({type(err).__name__})", 422
                raise HTTPException(code, detail=unprocessable(f"reload refused: {reason}").detail) from None
            self.current = new
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_prompt(new.info, new.check)
            log.info("prompt reloaded: %s (%s)", new.info["id"], new.info["fingerprint"])
            return {"previous": previous.info, "current": new.info}

    async def reload_on_signal(self) -> None:
        """SIGHUP: re-read the prompt in use, logging the outcome."""
        try:
            await self.reload(None)
        except HTTPException as err:
            log.error("SIGHUP reload: %s", err.detail)


class Observe:
    """ASGI middleware counting requests by route and status code (`aborted`: the client left before an
    answer) and timing them."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        state: dict[str, Any] = {"code": None, "left": False}
        start = time.perf_counter()

        async def watch() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                state["left"] = True
            return message

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["code"] = message["status"]
            await send(message)

        failed = False
        try:
            await self.app(scope, watch, capture)
        except asyncio.CancelledError:
            state["left"] = True
            raise
        except Exception:
            failed = True
            raise
        finally:
            code = state["code"]
            label = str(code) if code is not None else ("500" if failed and not state["left"] else "aborted")
            self.metrics.requests.labels(route, label).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def create_app(
    prompt: ServedPrompt | Predictor, config: ServeConfig, loader: Loader | None = None
) -> FastAPI:
    """The FastAPI app serving `prompt` (an `Unlearned` or a `ServedPrompt`); `loader` enables reloads."""
    served = prompt if isinstance(prompt, ServedPrompt) else ServedPrompt.wrap(prompt)
    service = Service(served, config, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        loop = asyncio.get_running_loop()
        on_signal = config.reload_on_sighup and threading.current_thread() is threading.main_thread()
        if on_signal:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(service.reload_on_signal()))
            if config.sighup_pending is not None and config.sighup_pending.is_set():
                log.info("a SIGHUP came while the model loaded: re-reading the prompt")
                loop.create_task(service.reload_on_signal())
        try:
            yield
        finally:
            if on_signal:
                loop.remove_signal_handler(signal.SIGHUP)
            await service.stop()

    app = FastAPI(
        title="spul",
        version=spul.__version__,
        description="Text classification with an unlearning soft prompt applied to every request.",
        lifespan=lifespan,
        docs_url=None,  # the HTML docs load JavaScript from a CDN: never served
        redoc_url=None,
        openapi_url="/openapi.json" if config.docs else None,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A bounded one-line 422 that never echoes the input."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))[:80]
        return JSONResponse({"detail": unprocessable(f"invalid request at {where}").detail}, 422)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "starting or shutting down"}})
    async def readyz() -> JSONResponse:
        """Ready to classify (503 while starting or draining)."""
        if not service.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def body_schema(model: type[BaseModel]) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"requestBody": {"content": {"application/json": {"schema": schema}}}}

    @app.post(
        "/v1/classify",
        tags=["classify"],
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        responses={401: {}, 408: {}, 413: {}, 422: {}, 503: {}},
        openapi_extra=body_schema(ClassifyRequest),
    )
    async def classify(request: Request) -> dict[str, Any]:
        """The label of each text, with the unlearning prompt applied."""
        body = parse_body(await request.body(), {"texts": "list"}, required=("texts",))
        texts = check_texts(body["texts"] or [], config.max_texts, config.max_text_chars)
        service.metrics.in_flight.inc()
        try:
            predictions, info = await service.classify(texts)
        except HTTPException:
            raise
        except Exception:
            log.exception("prediction failed")
            raise HTTPException(500, detail="prediction failed") from None
        finally:
            service.metrics.in_flight.dec()
        service.metrics.texts.inc(len(texts))
        return {"predictions": public(predictions, config.return_probabilities), "prompt": info}

    @app.get("/v1/prompt", tags=["classify"], response_model=PromptInfo)
    async def prompt_info() -> dict[str, Any]:
        """The prompt in use and the deletion requests it covers."""
        return service.current.info

    @app.post(
        "/v1/admin/reload",
        tags=["admin"],
        response_model=ReloadResponse,
        responses={403: {"description": "refused (or reloads off); the old prompt stays"}, 422: {}},
        openapi_extra=body_schema(ReloadRequest),
    )
    async def reload(request: Request) -> dict[str, Any]:
        """Admin token only: swap in a prompt under the prompt roots, or re-read the one in use."""
        if not is_admin(request.scope, config.admin_token):  # AuthGate checked already; never rely on one
            raise HTTPException(403, detail="this route needs the admin token")
        body = parse_body(await request.body(), {"prompt": "str"})
        return await service.reload(body.get("prompt"))

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, with the request bodies these routes parse themselves."""
        schema = generate()
        bodies = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ClassifyRequest, ReloadRequest):
            bodies.setdefault(model.__name__, model.model_json_schema())
        return schema

    app.openapi = openapi
    routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(AuthGate, token=config.token, admin_token=config.admin_token)  # before the body
    app.add_middleware(Observe, metrics=service.metrics, routes=routes)  # outermost: sees 401s and 413s
    return app
