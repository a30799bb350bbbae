"""Run the service with uvicorn: check every setting and bind the port, then load the model, then serve.

Order matters: a bad host, port, token, prompt root or template, or a busy port, is a one-line error
before the model loads; a SIGHUP that arrives while it loads is queued (one re-read after startup).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from spul.errors import SpulError


def catch_sighup() -> threading.Event:
    """Install a SIGHUP handler that only records the signal (until the service installs its own)."""
    pending = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: pending.set())
    return pending


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not listening yet); SpulError for a bad host or port or a busy port."""
    if not 1 <= port <= 65535:
        raise SpulError(f"--port {port}: must be 1..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise SpulError(f"--host {host!r}: not an address of this machine ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise SpulError(f"cannot bind {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


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
    admin_token_file: str | Path | None = None,
    insecure_no_auth: bool = False,
    prompt_roots: Sequence[str | Path] | None = None,
    return_probabilities: bool = False,
    docs: bool = False,
    max_body_bytes: int = 1_000_000,
    body_timeout: float = 10.0,
    max_texts: int = 64,
    max_text_chars: int = 5_000,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queued_texts: int = 4096,
    max_connections: int = 512,
    graceful_timeout: float = 30.0,
    log_level: str = "info",
    sighup_pending: threading.Event | None = None,
) -> None:
    """Serve `prompt` on host:port; SIGHUP re-reads the prompt in use, SIGTERM/SIGINT drain and stop."""
    pending = sighup_pending or catch_sighup()
    import uvicorn

    from spul.artifacts import read_manifest
    from spul.serve.app import ServeConfig, create_app
    from spul.serve.auth import resolve_admin_token, resolve_token
    from spul.serve.prompt import check_manifest, prompt_loader, resolve_prompt

    token = resolve_token(token_file, insecure_no_auth, host)
    admin_token = resolve_admin_token(admin_token_file, token)
    roots = [Path(r) for r in prompt_roots] if prompt_roots else [Path(prompt).resolve().parent]
    for root in roots:
        if not root.is_dir():
            raise SpulError(f"--prompt-root {root}: folder not found")
    resolved = [r.resolve() for r in roots]
    folder, _ = resolve_prompt(Path(prompt).resolve(), resolved)
    check_manifest(read_manifest(folder), f"--prompt {prompt}")
    sock = bind(host, port)
    try:
        load = prompt_loader(
            folder, roots=resolved, model=model, adapter=adapter, device=device, precision=precision
        )
        served = load(None, None)
        config = ServeConfig(
            token=token,
            admin_token=admin_token,
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout,
            max_texts=max_texts,
            max_text_chars=max_text_chars,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queued_texts=max_queued_texts,
            return_probabilities=return_probabilities,
            docs=docs,
            reload_on_sighup=True,
            sighup_pending=pending,
        )
        app = create_app(served, config, loader=load)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level=log_level,
                timeout_graceful_shutdown=graceful_timeout,
                limit_concurrency=max_connections,
                timeout_keep_alive=5,
                access_log=False,
            )
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
