"""What every Azure ML route module shares: the workspace scope in paths, Azure's error shape, run tokens."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from sandbox.service.run_token import RunClaims
from sandbox.service.security import bearer_token

#: ``{ws}`` in Azure ML's route templates.
WORKSPACE_SCOPE = ("/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
                   "/providers/Microsoft.MachineLearningServices/workspaces/{workspace_name}")


class AzureError(HTTPException):
    """An error answered in Azure's shape: ``{"error": {"code", "message", ...}}``."""

    def __init__(self, status_code: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status_code, message)
        self.code = code
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"code": self.code, "message": self.detail, "details": [], **self.extra}},
                            status_code=self.status_code)


def services(request: Request) -> Any:
    return request.app.state.services


def run_claims(request: Request) -> RunClaims:
    """The caller's run token, checked: 401 without a valid one (the stack token is not a run token)."""
    claims = services(request).run_tokens.verify(bearer_token(request))
    if claims is None:
        raise AzureError(401, "AuthenticationFailed",
                         "This route needs a run token (Authorization: Bearer $AZUREML_RUN_TOKEN); the one "
                         "presented is missing, expired or was not issued by this workspace service.")
    return claims


def require_scope(claims: RunClaims, run_id: str, root_run_id: str | None) -> None:
    """403 unless the token's run may act on ``run_id`` (itself or a run of its own tree)."""
    if not claims.may_act_on(run_id, root_run_id):
        raise AzureError(403, "Forbidden", f"The run token of run {claims.run_id!r} cannot act on run {run_id!r}.")
