"""Request bodies of the Azure ML routes: strict JSON, read up to a bound, never more into memory."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from sandbox.service.routes.common import AzureError

#: A run PATCH, an event, a metrics query: small objects.
SMALL_BODY = 1024 * 1024


async def read_json(request: Request, limit: int, what: str, *, non_finite: bool = False) -> Any:
    """The body as strict JSON, at most ``limit`` bytes; an empty body is ``{}``. ``NaN``/``Infinity``/
    ``-Infinity`` only with ``non_finite`` (azureml-core's metric batches send them bare, as Python's json does).

    413 past the limit and 400 for a body that is not JSON, both in Azure's error shape.
    """
    too_large = AzureError(413, "RequestEntityTooLarge",
                           f"The request body is larger than {limit} bytes, the limit for {what}.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=float if non_finite else _no_constant)
    except (ValueError, RecursionError) as exc:
        raise AzureError(400, "BadRequest", f"The body of {what} is not JSON: {exc}") from None


async def read_json_object(request: Request, limit: int, what: str, *, non_finite: bool = False) -> dict[str, Any]:
    body = await read_json(request, limit, what, non_finite=non_finite)
    if not isinstance(body, dict):
        raise AzureError(400, "BadRequest", f"The body of {what} must be a JSON object, not {type(body).__name__}.")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send finite numbers)")
