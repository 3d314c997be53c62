"""The whole tutorial, locally, as a user lives it (``make demo``).

stack up -> data -> upload-data.py -> run-pytorch-data.py (submits, prints the URL and exits; the
run goes on in the workspace service) -> the run's driver log followed to its end -> metrics and
the URL again. ``--images N`` makes a smaller data set (default: the full 50,000 images).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "day1-experiment-data"


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(command: list[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    print(f"$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}", flush=True)
    result = subprocess.run(command, cwd=REPO, text=True, stdout=subprocess.PIPE if capture else None, check=False)
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"error: '{' '.join(command)}' exited with {result.returncode}; see its output above")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="training images to generate (default: all 50,000)")
    args = parser.parse_args(argv)
    python = sys.executable
    cli = [python, "-m", "sandbox.cli"]

    step("1/5 The local stack (Docker, images, Azurite, workspace service)")
    run([*cli, "up"])

    step("2/5 CIFAR-10 in ./data")
    data = REPO / "data"
    if (data / "cifar-10-batches-py").is_dir() and (data / "cifar-10-python.tar.gz").is_file():
        print(f"    {data} is there already (delete it to generate it again)")
    else:
        extra = ["--images", str(args.images)] if args.images else []
        run([*cli, "data", "cifar10", "--out", str(data), *extra])

    step("3/5 upload-data.py: ./data -> the default datastore, datasets/cifar10")
    run([python, "control/upload-data.py"])

    step("4/5 run-pytorch-data.py: submit train.py with the dataset mounted as --data_path")
    submitted = run([python, "control/run-pytorch-data.py", "--experiment", EXPERIMENT], capture=True)
    match = re.search(r"/runs/([^?\s]+)", submitted.stdout)
    if not match:
        raise SystemExit("error: run-pytorch-data.py printed no run URL")
    run_id = match.group(1)
    url = submitted.stdout.strip().splitlines()[-1]

    step(f"5/5 The control script has exited; run {run_id} goes on. Following its driver log:")
    from sandbox.target import connect

    aml = connect("local")
    ws = aml.Workspace.from_config()
    submitted_run = aml.Run(aml.Experiment(ws, EXPERIMENT), run_id)
    try:
        submitted_run.wait_for_completion(show_output=True, raise_on_error=False)
    except Exception as exc:
        print(f"\n{exc}\nFollow it again with: .venv/bin/aml-sandbox logs {run_id} --follow")
        return 130
    status = submitted_run.get_status()
    metrics = submitted_run.get_metrics()
    print(f"Status: {status}")
    for name, value in metrics.items():
        shown = ", ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, list) else value
        print(f"Metric {name}: {shown}")
    if not metrics and status == "Completed":
        print("Metric loss: none logged: the tutorial's train.py logs the mean loss every 2000 mini-batches of 4 "
              "images, and this data set has fewer per epoch (use --images 8000 or more to see it).")
    print(f"Files: {', '.join(submitted_run.get_file_names())}")
    print(f"\nThe run page (open it in a browser):\n{url}")
    return 0 if status == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
