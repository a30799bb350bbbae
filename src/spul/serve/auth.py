"""Bearer-token authentication: the API and admin tokens, checked from the headers before the body."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from spul.errors import SpulError

TOKEN_ENV = "SPUL_API_TOKEN"
ADMIN_TOKEN_ENV = "SPUL_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16
MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def resolve_token(token_file: str | Path | None, insecure_no_auth: bool, host: str) -> str | None:
    """The token from --token-file, else $SPUL_API_TOKEN; None only with --insecure-no-auth on loopback."""
    if insecure_no_auth:
        if token_file is not None:
            raise SpulError("--insecure-no-auth and --token-file contradict each other; drop one")
        if not is_loopback(host):
            raise SpulError(
                f"--insecure-no-auth is for local use only: bind to 127.0.0.1, not {host}, or give a token"
            )
        return None
    token, where = read_token(token_file, TOKEN_ENV, "API token")
    if token is None:
        raise SpulError(
            f"no API token: set {TOKEN_ENV} or pass --token-file "
            f"(or --insecure-no-auth for local use); {MAKE_ONE}"
        )
    return token


def read_token(file: str | Path | None, env: str, role: str) -> tuple[str | None, str]:
    """A token from `file`, else from $env (None when neither gives one), and where it came from; one that
    is too short is refused, naming where it came from."""
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise SpulError(f"{path}: {role} file not found")
        token, where = path.read_text(encoding="utf-8").strip(), str(path)
    else:
        token, where = os.environ.get(env, "").strip(), f"${env}"
        if not token:
            return None, where
    if len(token) < MIN_TOKEN_CHARS:
        raise SpulError(f"the {role} in {where} is too short (< {MIN_TOKEN_CHARS} characters); {MAKE_ONE}")
    return token, where


def is_loopback(host: str) -> bool:
    """True for localhost / 127.x / ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_admin_token(admin_token_file: str | Path | None, api_token: str | None) -> str | None:
    """The admin token (reloads) from --admin-token-file, else $SPUL_ADMIN_TOKEN; None = reloads off."""
    token, where = read_token(admin_token_file, ADMIN_TOKEN_ENV, "admin token")
    if token is None:
        return None
    if api_token is not None and secrets.compare_digest(token.encode(), api_token.encode()):
        raise SpulError(f"the admin token in {where} is the API token; give the admin role its own token")
    return token


PUBLIC = frozenset({"/healthz", "/readyz"})
ADMIN_PREFIX = "/v1/admin/"
RELOAD_OFF = "prompt reload is off: start spul serve with an admin token"


class AuthGate:
    """ASGI middleware: checks `Authorization: Bearer` from the headers alone, before any body is read.

    /healthz and /readyz are open; /v1/admin/... needs the admin token (403 when reloads are off or
    with the API token); every other path needs the API token (the admin token is accepted too).
    """

    def __init__(self, app: ASGIApp, token: str | None, admin_token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.admin = admin_token.encode() if admin_token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        is_admin = self.admin is not None and given is not None and secrets.compare_digest(given, self.admin)
        if scope["path"].startswith(ADMIN_PREFIX):
            if self.admin is None:
                await _deny(scope, receive, send, 403, RELOAD_OFF)
            elif is_admin:
                await self.app(scope, receive, send)
            elif given is None:
                await _deny(scope, receive, send, 401, "missing or invalid bearer token")
            else:
                await _deny(scope, receive, send, 403, "this route needs the admin token")
            return
        is_user = given is not None and self.token is not None and secrets.compare_digest(given, self.token)
        if self.token is None or is_admin or is_user:
            await self.app(scope, receive, send)
            return
        await _deny(scope, receive, send, 401, "missing or invalid bearer token")


def is_admin(scope: Scope, admin_token: str | None) -> bool:
    """True when the request carries the admin token (False when there is none)."""
    given = _bearer(scope)
    if admin_token is None or given is None:
        return False
    return secrets.compare_digest(given, admin_token.encode())


def _bearer(scope: Scope) -> bytes | None:
    """The bearer token of the request's Authorization header, or None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


async def _deny(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    """Answer without reading the body; the connection is closed so an unread body is not parsed."""
    headers = {"Connection": "close"} | ({"WWW-Authenticate": "Bearer"} if code == 401 else {})
    await JSONResponse({"detail": detail}, status_code=code, headers=headers)(scope, receive, send)
