"""Bearer-token authentication: where the token comes from, and the check on each request."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from spul.errors import SpulError

TOKEN_ENV = "SPUL_API_TOKEN"
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
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise SpulError(f"{path}: token file not found")
        token, where = path.read_text(encoding="utf-8").strip(), str(path)
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), f"${TOKEN_ENV}"
        if not token:
            raise SpulError(
                f"no API token: set {TOKEN_ENV} or pass --token-file "
                f"(or --insecure-no-auth for local use); {MAKE_ONE}"
            )
    if len(token) < MIN_TOKEN_CHARS:
        raise SpulError(f"the API token in {where} is too short (< {MIN_TOKEN_CHARS} characters); {MAKE_ONE}")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost / 127.x / ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


bearer = HTTPBearer(auto_error=False, description="the service's API token")


def token_check(token: str | None) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <token>`."""
    expected = token.encode() if token is not None else None

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not secrets.compare_digest(given, expected):
            raise HTTPException(
                401, detail="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return authorize
