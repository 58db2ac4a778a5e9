"""Bearer-token auth for ``/v1/*``: FastAPI's HTTP bearer scheme (so ``/openapi.json`` declares it), the token
compared in constant time. The app requires it only when the server has a token (``create_app``)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from altclip.server.errors import Unauthorized
from altclip.server.service import ServiceDep

bearer = HTTPBearer(
    auto_error=False,
    description="The token the server was started with (--token-file, ALTCLIP_TOKEN_FILE, ALTCLIP_TOKEN)",
)


async def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], service: ServiceDep
) -> None:
    token = service.settings.token
    if token is None:
        return
    sent = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise Unauthorized("Missing or wrong bearer token")
