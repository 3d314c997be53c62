"""Run tokens: what a run (and its child runs) presents to the workspace service, never the stack token.

On Azure a run's own azureml-core reads ``AZUREML_RUN_TOKEN`` (a JWT) and sends it as
``Authorization: Bearer``; it reads the ``exp`` claim and never checks a signature. Here the token is
an HS256 JWT signed with a key derived from the stack's token (so tokens survive a restart of the
service and die with the stack), carrying the run's root run id: a run may act on itself and on the
runs of its own tree, nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt

#: Azure's tenant id claim (``tid``) is required by azureml-core (portal URLs); one fixed value here.
TENANT_ID = "00000000-0000-0000-0000-000000000000"
AUDIENCE = "aml-sandbox-run"
ALGORITHM = "HS256"
#: Longer than any run: azureml-core refreshes a token that has less than 95 s left.
LIFETIME_SECONDS = 30 * 24 * 3600
_KEY_PURPOSE = b"aml-sandbox run token v1"


@dataclass(frozen=True)
class RunClaims:
    """What a valid run token says: the run it was issued to and the root of that run's tree."""

    run_id: str
    root_run_id: str
    experiment: str
    expires: int

    def may_act_on(self, run_id: str, root_run_id: str | None) -> bool:
        """True for the token's own run and for any run of the same tree (its child runs)."""
        return run_id == self.run_id or (root_run_id is not None and root_run_id == self.root_run_id)


class RunTokens:
    """Issues and checks run tokens with a key derived from the stack's token."""

    def __init__(self, stack_token: str) -> None:
        if not stack_token:
            raise ValueError("run tokens need the stack's token to derive their key from")
        self._key = hmac.new(stack_token.encode(), _KEY_PURPOSE, hashlib.sha256).digest()

    def issue(self, run_id: str, experiment: str, *, root_run_id: str | None = None,
              lifetime: int = LIFETIME_SECONDS, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"aud": AUDIENCE, "tid": TENANT_ID, "iat": issued, "nbf": issued, "exp": issued + lifetime,
                  "runId": run_id, "rootRunId": root_run_id or run_id, "experiment": experiment}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> RunClaims | None:
        """The token's claims, or None when it is missing, forged, expired or not a run token."""
        if not token:
            return None
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE,
                                options={"require": ["exp", "runId", "rootRunId"]})
        except jwt.PyJWTError:
            return None
        return RunClaims(str(claims["runId"]), str(claims["rootRunId"]), str(claims.get("experiment", "")),
                         int(claims["exp"]))
