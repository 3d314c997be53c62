"""The tutorial end to end through the workspace service (issues 9 and 10): the control scripts as a user runs
them, the run outliving the control script, the driver log of PARITY.md 1.2, metrics, outputs, the run page."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from sandbox import aml, cifar10
from tests.integration.conftest import REPO, SandboxEnv, run_containers
from tests.integration.helpers import experiment_name, page

M = r"/tmp/tmp[a-z0-9_]{8}"


def _expected_block(run_id: str, ws: aml.Workspace) -> list[str]:
    """PARITY.md 1.2, line for line; ids, paths and the workspace repr filled in (regex per line)."""
    wd = (f"/mnt/batch/tasks/shared/LS_root/jobs/{ws.name}/azureml/{run_id}/mounts/workspaceblobstore/azureml/"
          f"{run_id}")
    literal = [
        "Processing 'input'.",
        "Processing dataset FileDataset",
        "{",
        '  "source": [',
        "    \"('workspaceblobstore', 'datasets/cifar10')\"",
        "  ],",
        '  "definition": [',
        '    "GetDatastoreFiles"',
        "  ],",
        '  "registration": {',
    ]
    lines = [re.escape(line) for line in literal]
    lines += [
        r'    "id": "[0-9a-f-]{36}",',
        re.escape('    "name": null,'),
        re.escape('    "version": null,'),
        re.escape(f'    "workspace": "{ws!r}"'),
        re.escape("  }"),
        re.escape("}"),
        rf"Mounting input to (?P<m1>{M})\.",
        rf"Mounted input to (?P<m2>{M}) as folder\.",
        re.escape("Exit __enter__ of DatasetContextManager"),
        re.escape("Entering Run History Context Manager."),
        re.escape(f"Current directory:  {wd}"),
        re.escape("Preparing to call script [ train.py ] with arguments: ['--data_path', '$input', "
                  "'--learning_rate', '0.003', '--momentum', '0.92']"),
        re.escape("After variable expansion, calling script [ train.py ] with arguments: ['--data_path', '")
        + rf"(?P<m3>{M})" + re.escape("', '--learning_rate', '0.003', '--momentum', '0.92']"),
        "",
        re.escape("Script type = None"),
        re.escape("===== DATA ====="),
        rf"DATA PATH: (?P<m4>{M})",
        re.escape("LIST FILES IN DATA PATH..."),
        re.escape("['cifar-10-batches-py', 'cifar-10-python.tar.gz']"),
    ]
    return lines


@pytest.mark.parity
def test_the_tutorial_runs_on_after_its_control_script_and_writes_azures_driver_log(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    cifar10.generate(tmp_path / "data", images=10000, seed=3)  # 2,500 batches an epoch: one loss line each
    env = workspace_env.env
    experiment = experiment_name("tutorial")

    upload = subprocess.run([sys.executable, str(REPO / "control" / "upload-data.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert upload.returncode == 0, upload.stderr
    assert upload.stdout.splitlines()[-1] == "Uploaded 9 files"

    submitted = subprocess.run(
        [sys.executable, str(REPO / "control" / "run-pytorch-data.py"), "--experiment", experiment],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    lines = submitted.stdout.splitlines()
    assert lines[:2] == ["Submitted to compute cluster. Click link below", ""]
    url = lines[2]
    run_id = re.search(r"/runs/([^?]+)\?wsid=", url).group(1)
    assert re.fullmatch(rf"{experiment}_\d{{10}}_[0-9a-f]{{8}}", run_id)

    # The control script has exited; another process finds the run, which is still going.
    ws = aml.Workspace.from_config()
    run = aml.Run(aml.Experiment(ws, experiment), run_id)
    assert run.get_status() in {"Starting", "Preparing", "Queued", "Running"}
    html = page(url)
    assert run_id in html and 'id="status"' in html

    out = io.StringIO()
    with redirect_stdout(out):
        details = run.wait_for_completion(show_output=True)
    streamed = out.getvalue()
    assert details["status"] == "Completed"
    assert streamed.startswith(f"RunId: {run_id}\nWeb View: {run.get_portal_url()}\n\n"
                               "Streaming azureml-logs/70_driver_log.txt\n"
                               "========================================\n\n")
    assert streamed.endswith(f"\nExecution Summary\n=================\nRunId: {run_id}\n"
                             f"Web View: {run.get_portal_url()}\n\n")

    log = run._client.read_file(run_id, "azureml-logs/70_driver_log.txt")[0].decode()
    log_lines = log.splitlines()
    expected = _expected_block(run_id, ws)
    start = log_lines.index("Processing 'input'.")
    mounts = set()
    for offset, pattern in enumerate(expected):
        match = re.fullmatch(pattern, log_lines[start + offset])
        assert match, f"driver log line {start + offset}: {log_lines[start + offset]!r} !~ {pattern!r}"
        mounts.update(v for v in match.groupdict().values() if v)
    assert len(mounts) == 1, f"the mount path differs between lines: {mounts}"
    assert log_lines[0].endswith("] Entering context manager injector.")
    assert "The experiment completed successfully. Finalizing run..." in log_lines
    assert "Finished Training" in log_lines
    assert streamed.count("Processing 'input'.") == 1

    printed = [float(m) for m in re.findall(r"epoch=\d, batch= 2000: loss (\d+\.\d\d)", log)]
    losses = run.get_metrics()["loss"]
    assert isinstance(losses, list) and len(losses) == 2 == len(printed)
    assert [round(v, 2) for v in losses] == printed

    files = run.get_file_names()
    assert "azureml-logs/70_driver_log.txt" in files and "outputs/model.pt" in files
    run.download_file("outputs/model.pt", str(tmp_path / "model.pt"))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["conv1.weight"].shape == (6, 3, 5, 5)

    html = page(url)
    assert "Completed" in html and "Finished Training" in html and "outputs/model.pt" in html
    details = run.get_details()
    assert details["inputDatasets"][0]["consumptionDetails"] == {"type": "RunInput", "inputName": "input",
                                                                  "mechanism": "Mount"}
    assert details["runDefinition"]["arguments"] == ["--data_path", "DatasetConsumptionConfig:input",
                                                     "--learning_rate", 0.003, "--momentum", 0.92]
    assert not (workspace_env.settings.home / "runs" / run_id).exists(), "the run folder is removed at the end"
    assert not run_containers(workspace_env.settings.project)
