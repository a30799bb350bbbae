"""`spul serve` (the HTTP service) and `spul requests ...` (the deletion-request ledger)."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from spul.cli.options import (
    AdapterOpt,
    BaseModelOpt,
    DeviceOpt,
    PrecisionOpt,
    PromptOpt,
    bounded,
    gathered,
    one_of,
    user_errors,
    words,
)
from spul.errors import SpulError

requests_app = typer.Typer(
    help="The deletion-request ledger: add requests, list them, show one.", no_args_is_help=True
)
LedgerOpt = Annotated[Path, typer.Option(help="the ledger file (JSON; created by the first `add`)")]
DEFAULT_LEDGER = Path("runs/ledger.json")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


@dataclasses.dataclass
class ServeLimits:
    """The service's limits, each checked before the model loads (passed to `run_server` as they are)."""

    max_body_bytes: Annotated[
        int, typer.Option(help="largest request body (else 413)", callback=bounded(1))
    ] = 1_000_000
    body_timeout: Annotated[
        float,
        typer.Option(help="seconds to receive a request body (else 408)", callback=bounded(0, open_low=True)),
    ] = 10.0
    max_texts: Annotated[int, typer.Option(help="most texts per request (else 422)", callback=bounded(1))] = (
        64
    )
    max_text_chars: Annotated[
        int, typer.Option(help="longest text in characters (else 422)", callback=bounded(1))
    ] = 5_000
    max_batch: Annotated[int, typer.Option(help="most texts per model batch", callback=bounded(1))] = 32
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a batch waits for more requests", callback=bounded(0))
    ] = 5.0
    max_queued_texts: Annotated[
        int, typer.Option(help="most texts waiting for the model (else 503)", callback=bounded(1))
    ] = 4096
    max_connections: Annotated[
        int, typer.Option(help="most concurrent connections (else 503)", callback=bounded(1))
    ] = 512
    graceful_timeout: Annotated[
        float,
        typer.Option(
            help="seconds to finish in-flight requests on shutdown", callback=bounded(0, open_low=True)
        ),
    ] = 30.0


@dataclasses.dataclass
class ServeAccess:
    """Who may call the service and what reloads may serve (passed to `run_server` as they are)."""

    token_file: Annotated[
        Path | None, typer.Option(help="file holding the API token (default: $SPUL_API_TOKEN)")
    ] = None
    admin_token_file: Annotated[
        Path | None,
        typer.Option(help="file holding the admin token for reloads (default: $SPUL_ADMIN_TOKEN; none: off)"),
    ] = None
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="no authentication (loopback only, local use)")
    ] = False
    prompt_roots: Annotated[
        list[Path] | None,
        typer.Option(
            "--prompt-root", help="folder reloads may serve from (repeatable; default: the prompt's parent)"
        ),
    ] = None


@user_errors
@gathered("limits", ServeLimits)
@gathered("access", ServeAccess)
def serve_cmd(
    prompt: PromptOpt = "runs/prompt",
    model: BaseModelOpt = None,
    adapter: AdapterOpt = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind (1..65535)")] = 8000,
    return_probabilities: Annotated[
        bool,
        typer.Option(
            "--return-probabilities", help="also return label probabilities (they leak the forgotten label)"
        ),
    ] = False,
    docs: Annotated[bool, typer.Option("--docs", help="serve /openapi.json (behind the API token)")] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    log_level: Annotated[
        str, typer.Option(help=f"uvicorn log level: {', '.join(LOG_LEVELS)}", callback=one_of(*LOG_LEVELS))
    ] = "info",
    limits: ServeLimits = None,
    access: ServeAccess = None,
) -> None:
    """HTTP service: POST /v1/classify, the unlearning prompt applied to every request (SIGHUP re-reads)."""
    pending = threading.Event()  # first of all: a SIGHUP while the model loads is queued, not fatal
    signal.signal(signal.SIGHUP, lambda *_: pending.set())
    from spul.startup import held_sighups

    if held_sighups():  # one came during start-up (spul.__main__ held it): re-read once serving
        pending.set()
    from spul.serve.server import run_server

    if limits.max_queued_texts < limits.max_texts:
        queued, texts = limits.max_queued_texts, limits.max_texts
        raise SpulError(f"--max-queued-texts ({queued}) must be at least --max-texts ({texts})")
    run_server(
        prompt,
        model=model,
        adapter=adapter,
        device=device,
        precision=precision,
        host=host,
        port=port,
        **dataclasses.asdict(access),
        return_probabilities=return_probabilities,
        docs=docs,
        **dataclasses.asdict(limits),
        log_level=log_level,
        sighup_pending=pending,
    )


# A typer signature, like experiment_cmd's: options differ, the shape is typer's.
@requests_app.command("add")
@user_errors
def add_cmd(
    ledger: LedgerOpt = DEFAULT_LEDGER,
    file: Annotated[
        Path | None, typer.Option(help="texts to forget, one per line (stored as sha256)")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="a text to forget (repeatable; stored as sha256)")
    ] = None,
    regex: Annotated[str | None, typer.Option(help="forget rows in which this regex matches")] = None,
    keywords: Annotated[
        str | None, typer.Option(help="forget rows with any of these comma-separated words")
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="free note, e.g. a ticket number (no personal data)")
    ] = None,
) -> None:
    """Add a deletion request (texts by hash, a regex or keywords); earlier requests are kept."""
    from spul.ledger import locked, read_texts

    if file is not None and text:
        raise SpulError("give the texts with --file or with --text, not both")
    texts = read_texts(file) if file is not None else (list(text) if text else None)
    with locked(ledger, missing_ok=True) as book:
        request = book.add(
            texts=texts,
            pattern=regex,
            keywords=list(words(keywords)) if keywords is not None else None,
            source=str(file) if file is not None else None,
            note=note,
        )
    typer.echo(request.id)
    note(f"added {request.id} ({request.describe()}) to {ledger}")


@requests_app.command("list")
@user_errors
def list_cmd(
    ledger: LedgerOpt = DEFAULT_LEDGER,
    status: Annotated[str | None, typer.Option(help="only requests with this status (open, covered)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the requests as JSON")] = False,
) -> None:
    """One line per request: id, date, status, what it asks for, the prompt that covers it."""
    from spul.ledger import STATUSES, Ledger

    if status is not None and status not in STATUSES:
        raise SpulError(f"--status {status!r}: choose one of {', '.join(STATUSES)}")
    chosen = [r for r in Ledger.load(ledger).requests if status is None or r.status == status]
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in chosen], indent=2))
        return
    for r in chosen:
        covered = f"  prompt {r.covered_by['prompt']} ({r.covered_by['rows']} rows)" if r.covered_by else ""
        typer.echo(f"{r.id}  {r.created}  {r.status:<7}  {r.describe()}{covered}")


@requests_app.command("show")
@user_errors
def show_cmd(
    request_id: Annotated[str, typer.Argument(help="request id, e.g. req-0001")],
    ledger: LedgerOpt = DEFAULT_LEDGER,
) -> None:
    """Print one request as JSON."""
    from spul.ledger import Ledger

    typer.echo(json.dumps(Ledger.load(ledger).get(request_id).to_json(), indent=2))
