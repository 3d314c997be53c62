"""What every Azure ML route module shares: the workspace scope in paths, Azure's error shape, run tokens.

A run token is valid for 30 days (``run_token.LIFETIME_SECONDS``), far longer than its run. Reads stay
allowed with it; a route that WRITES takes :data:`WriteClaims` (:func:`write_claims`), which refuses the
token once the root run of its tree has finished (Completed, Failed, Canceled): the executor finishes a
root run only after its container has exited, so every write a run legitimately makes comes before.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from sandbox.service.run_record import RunNotFoundError
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


def write_claims(request: Request) -> RunClaims:
    """:func:`run_claims` for a route that writes: 403 once the token's root run has finished.

    A child run shares its root's token tree, so its own ``complete()`` still writes while the root runs;
    after the root has ended, no run of the tree writes any more (its token may still read).
    """
    claims = run_claims(request)
    try:
        status = services(request).store.run_status(claims.root_run_id)
    except RunNotFoundError:
        raise AzureError(403, "Forbidden", f"run {claims.root_run_id} is gone: its run token no longer "
                                           "writes.") from None
    if status.is_terminal:
        raise AzureError(403, "Forbidden", f"run {claims.root_run_id} is {status}: its run token no longer "
                                           "writes.")
    return claims


#: A route's checked run token (401 without one), for routes that only read.
Claims = Annotated[RunClaims, Depends(run_claims)]
#: The same for routes that write: also 403 once the token's root run has finished.
WriteClaims = Annotated[RunClaims, Depends(write_claims)]
