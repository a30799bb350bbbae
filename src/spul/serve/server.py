"""Run the service with uvicorn: load the prompt first (errors stop here), then serve until a signal."""

from __future__ import annotations

from pathlib import Path

from spul.serve.app import ServeConfig, create_app
from spul.serve.auth import resolve_token
from spul.serve.prompt import prompt_loader


def run_server(
    prompt: str | Path,
    *,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | Path | None = None,
    insecure_no_auth: bool = False,
    max_body_bytes: int = 1_000_000,
    max_texts: int = 64,
    max_text_chars: int = 5_000,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    graceful_timeout: float = 30.0,
    log_level: str = "info",
) -> None:
    """Serve `prompt` on host:port; SIGHUP reloads the prompt folder, SIGTERM/SIGINT drain and stop."""
    import uvicorn

    token = resolve_token(token_file, insecure_no_auth, host)
    load = prompt_loader(prompt, model=model, adapter=adapter, device=device, precision=precision)
    served = load(None, None)
    config = ServeConfig(
        token=token,
        max_body_bytes=max_body_bytes,
        max_texts=max_texts,
        max_text_chars=max_text_chars,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        reload_on_sighup=True,
    )
    app = create_app(served, config, loader=load)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=False,
    )
