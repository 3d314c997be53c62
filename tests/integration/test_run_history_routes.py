"""azureml-core's own ``Run`` reports to the real stack's run history routes with a run token (issue 17).

Runs do not switch over yet (their containers still report through the runtime), so a HOST process
plays the run: real azureml-core with Azure's run environment variables and the token the service
issues for a real submitted run, against the service as compose runs it. What it logs must show through
the service's JSON API and the facade's ``Run(...)``, and another run's token must be refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import aml
from sandbox.service.auth import read_token
from sandbox.service.store import experiment_id
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import experiment_name, submit, wait_for_status, write_script

pytest.importorskip("azureml.core", reason="the host process plays the run with the real azureml-core")

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "aml-sandbox-rg"

#: The submitted run only waits (at most ~90 s); the host logs as that run meanwhile, then cancels it.
WAITING_SCRIPT = """
import time
for _ in range(90):
    time.sleep(1)
print("waited")
"""

CLIENT = r'''
import json
from azureml.core import Run

run = Run.get_context()
for step, value in enumerate([0.5, 0.4, 0.3]):
    run.log("loss", value, step=step)
run.log("acc", 0.9)
run.log_list("curve", [1, 2, 3])
run.log_row("rows", epoch=1, acc=0.5)
run.log_row("rows", epoch=2, acc=0.75)
run.log_table("table", {"x": [1, 2, 3], "y": [0.1, 0.2, 0.3]})
run.tag("owner", "host")
run.set_tags({"stage": "routes"})
run.add_properties({"source": "azureml-core"})
child = run.child_run(name="kid")
child.log("child_loss", 1.5)
child.complete()
run.flush()
print("RESULT " + json.dumps({"module": type(run).__module__, "metrics": run.get_metrics(),
                              "tags": run.get_tags(), "child": child.id, "parent": child.parent.id,
                              "status": run.get_status()}))
'''


def _run_env(env: SandboxEnv, home: Path, run_id: str, experiment: str, token: str) -> dict[str, str]:
    url = f"http://127.0.0.1:{env.settings.service_port}"
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_PROXY": "*",
            "AZUREML_RUN_ID": run_id, "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION,
            "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP, "AZUREML_ARM_WORKSPACE_NAME": env.settings.workspace_name,
            "AZUREML_ARM_PROJECT_NAME": experiment, "AZUREML_EXPERIMENT_ID": experiment_id(experiment),
            "AZUREML_SERVICE_ENDPOINT": url, "AZUREML_DISCOVERY_SERVICE_ENDPOINT": url + "/discovery",
            "AZUREML_RUN_TOKEN": token}


def _play(env: SandboxEnv, home: Path, run_id: str, experiment: str, token: str,
          script: str) -> subprocess.CompletedProcess[str]:
    path = home / "client.py"
    path.write_text(script, encoding="utf-8")
    return subprocess.run([sys.executable, str(path)], env=_run_env(env, home, run_id, experiment, token), cwd=home,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.local_only
def test_a_host_process_logs_as_a_submitted_run_through_the_run_history_routes(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    experiment = experiment_name("routes")
    run = submit(tmp_path / "src", write_script(tmp_path / "src", "wait.py", WAITING_SCRIPT).name,
                 experiment=experiment)
    other = submit(tmp_path / "src", "wait.py", experiment=experiment)
    try:
        wait_for_status(run, {"Running"}, timeout=600)
        api = f"http://127.0.0.1:{workspace_env.settings.service_port}/api"
        owner = {"Authorization": f"Bearer {read_token(workspace_env.settings.home)}"}
        tokens = {r.id: httpx.post(f"{api}/runs/{r.id}/token", headers=owner, timeout=30).json()["token"]
                  for r in (run, other)}
        home = tmp_path / "home"
        home.mkdir()

        played = _play(workspace_env, home, run.id, experiment, tokens[run.id], CLIENT)
        lines = [line for line in played.stdout.splitlines() if line.startswith("RESULT ")]
        assert played.returncode == 0 and lines, f"{played.stdout[-3000:]}\n{played.stderr[-5000:]}"
        out: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        assert out["module"].startswith("azureml.core") and out["status"] == "Running" and out["parent"] == run.id

        expected = {"loss": [0.5, 0.4, 0.3], "acc": 0.9, "curve": [1, 2, 3],
                    "rows": {"epoch": [1, 2], "acc": [0.5, 0.75]}, "table": {"x": [1, 2, 3], "y": [0.1, 0.2, 0.3]}}
        assert out["metrics"] == expected
        assert httpx.get(f"{api}/runs/{run.id}/metrics", timeout=30).json()["metrics"] == expected
        facade = aml.Run(run.experiment, run.id)
        assert facade.get_metrics() == expected
        assert facade.get_tags() == {"owner": "host", "stage": "routes"} == out["tags"]
        record = httpx.get(f"{api}/runs/{run.id}", headers=owner, timeout=30).json()
        assert record["properties"]["source"] == "azureml-core" and record["status"] == "Running"
        assert [(c["runId"], c["status"]) for c in record["children"]] == [(out["child"], "Completed")]

        # The other run's token can neither write nor read this run: azureml-core gets Forbidden.
        refused = _play(workspace_env, home, run.id, experiment, tokens[other.id],
                        "from azureml.core import Run\nRun.get_context().log('evil', 1)\n")
        assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr[-3000:]
        assert "evil" not in httpx.get(f"{api}/runs/{run.id}/metrics", timeout=30).json()["metrics"]
    finally:
        for submitted in (run, other):
            submitted.cancel()
    assert wait_for_status(run, {"Canceled", "Completed", "Failed"}, timeout=120) == "Canceled"
