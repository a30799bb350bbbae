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

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import spul
from spul.errors import SpulError
from spul.serve.auth import token_check
from spul.serve.batcher import BatcherClosed, DynamicBatcher
from spul.serve.limits import BodyLimit, check_texts
from spul.serve.metrics import ServeMetrics
from spul.serve.prompt import Loader, Predictor, ServedPrompt

log = logging.getLogger("uvicorn.error")  # uvicorn configures it; plain logging otherwise


@dataclass
class ServeConfig:
    """Security and batching settings of one service."""

    token: str | None  # None = no authentication (local use only)
    max_body_bytes: int = 1_000_000
    max_texts: int = 64
    max_text_chars: int = 5_000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    reload_on_sighup: bool = False  # needs the main thread (the CLI sets it)


class ClassifyRequest(BaseModel):
    """Texts to classify. No other field is accepted: the prompt cannot be turned off."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="the texts to classify", examples=[["a gorgeous, witty movie."]])


class Prediction(BaseModel):
    """One text's label (a label word, or `other`) and label-word probabilities."""

    label: str
    probabilities: dict[str, float]


class PromptInfo(BaseModel):
    """Which prompt answered: folder, fingerprint of its files, the deletion requests it covers."""

    path: str
    fingerprint: str
    created: str | None = None
    method: str | None = None
    base_model: str | None = None
    requests: list[str] = []


class ClassifyResponse(BaseModel):
    """Predictions in request order, and the prompt that made all of them."""

    predictions: list[Prediction]
    prompt: PromptInfo


class ReloadRequest(BaseModel):
    """Reload the prompt folder in use, or switch to another one."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, description="new prompt folder (default: reload the current one)")


class ReloadResponse(BaseModel):
    """The prompt before and after the swap."""

    previous: PromptInfo
    current: PromptInfo


class Service:
    """One running service: the prompt in use, the batcher, metrics, reloads."""

    def __init__(self, prompt: ServedPrompt, config: ServeConfig, loader: Loader | None) -> None:
        self.current = prompt
        self.config = config
        self.loader = loader
        self.metrics = ServeMetrics()
        self.metrics.set_prompt(prompt.info)
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
        """Predictions through the batcher (503 while shutting down)."""
        if self.batcher is None:
            raise HTTPException(503, detail="the service is not ready")
        try:
            return await self.batcher.submit(texts)
        except BatcherClosed as err:
            raise HTTPException(503, detail=str(err)) from None

    async def reload(self, path: str | None) -> dict[str, Any]:
        """Load the new prompt completely, then swap one reference; in-flight batches keep the old one."""
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
            except SpulError as err:
                self.metrics.reloads.labels("failed").inc()
                detail = f"reload failed, still serving the old prompt: {err}"
                raise HTTPException(422, detail=detail) from None
            except Exception as err:
                self.metrics.reloads.labels("failed").inc()
                log.exception("prompt reload failed")
                raise HTTPException(
                    500, detail=f"reload failed, still serving the old prompt: {type(err).__name__}: {err}"
                ) from None
            self.current = new
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_prompt(new.info)
            log.info("prompt reloaded: %s (%s)", new.info["path"], new.info["fingerprint"])
            return {"previous": previous.info, "current": new.info}

    async def reload_on_signal(self) -> None:
        """SIGHUP: reload the current prompt folder, logging the outcome."""
        try:
            await self.reload(None)
        except HTTPException as err:
            log.error("SIGHUP reload: %s", err.detail)


class Observe:
    """ASGI middleware counting requests by route and status code and timing them."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
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
    )
    app.state.service = service
    authorized = [Depends(token_check(config.token))]

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

    @app.get("/metrics", tags=["ops"], dependencies=authorized, response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/classify",
        tags=["classify"],
        dependencies=authorized,
        response_model=ClassifyResponse,
        responses={401: {}, 413: {}, 422: {}, 503: {}},
    )
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        """Label and label probabilities of each text, with the unlearning prompt applied."""
        check_texts(body.texts, config.max_texts, config.max_text_chars)
        service.metrics.in_flight.inc()
        try:
            predictions, info = await service.classify(body.texts)
        except HTTPException:
            raise
        except Exception as err:
            log.exception("prediction failed")
            raise HTTPException(500, detail=f"prediction failed: {type(err).__name__}: {err}") from None
        finally:
            service.metrics.in_flight.dec()
        service.metrics.texts.inc(len(body.texts))
        return {"predictions": predictions, "prompt": info}

    @app.get("/v1/prompt", tags=["classify"], dependencies=authorized, response_model=PromptInfo)
    async def prompt_info() -> dict[str, Any]:
        """The prompt in use and the deletion requests it covers."""
        return service.current.info

    @app.post(
        "/v1/admin/reload",
        tags=["admin"],
        dependencies=authorized,
        response_model=ReloadResponse,
        responses={422: {"description": "the new prompt could not be loaded; the old one stays"}},
    )
    async def reload(body: ReloadRequest | None = None) -> dict[str, Any]:
        """Swap in a new prompt atomically (or re-read the current folder); no request is dropped."""
        return await service.reload(body.prompt if body else None)

    routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Observe, metrics=service.metrics, routes=routes)  # outermost: sees the 413s too
    return app
