"""Posts a run's error to run history as azureml-core does (``Run.Error`` event), with only the standard library.

Used where azureml-core cannot be: before the script starts (a dataset that cannot be mounted) and in an
environment without azureml-core. The route, body and token are Azure's (``AZUREML_SERVICE_ENDPOINT``,
``AZUREML_RUN_TOKEN``, ``/history/v1.0/<workspace>/experiments/<name>/runs/<id>/events``).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any

TIMEOUT = 30.0


def post_error(error: dict[str, Any]) -> bool:
    """Record ``error`` (Azure's shape: ``code``, ``message``, ``debug_type``...) on the run; False if not sent."""
    env = os.environ
    try:
        endpoint, token, run_id = env["AZUREML_SERVICE_ENDPOINT"], env["AZUREML_RUN_TOKEN"], env["AZUREML_RUN_ID"]
        scope = (f"subscriptions/{env['AZUREML_ARM_SUBSCRIPTION']}/resourceGroups/{env['AZUREML_ARM_RESOURCEGROUP']}"
                 f"/providers/Microsoft.MachineLearningServices/workspaces/{env['AZUREML_ARM_WORKSPACE_NAME']}")
        experiment = env["AZUREML_ARM_PROJECT_NAME"]
    except KeyError:
        return False  # not a run of the stack (no service to report to)
    quote = urllib.parse.quote
    url = (f"{endpoint.rstrip('/')}/history/v1.0/{scope}/experiments/{quote(experiment, safe='')}"
           f"/runs/{quote(run_id, safe='')}/events")
    body = {"timestamp": datetime.now(timezone.utc).isoformat(), "name": "Microsoft.MachineLearning.Run.Error",
            "data": {"RunId": run_id, "ErrorResponse": {"error": error}}}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return 200 <= response.status < 300
    except OSError as exc:
        print(f"aml-sandbox: the run's error could not be recorded in run history: {exc}", file=sys.stderr)
        return False
