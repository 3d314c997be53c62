"""Measured work in a process of its own, as a user's control script would run it; prints one JSON line.

    python -m bench.worker submit --workspace-dir D --source S --script X [--dataset PATH] [-- ARGS]
    python -m bench.worker upload --workspace-dir D --src FOLDER --target PATH
    python -m bench.worker imports

``submit`` is the tutorial's run-pytorch-data.py with another script (and the dataset mounted as the
first argument when ``--dataset`` is given); ``upload`` is upload-data.py; ``imports`` only imports
what any azureml-core control script imports (the memory floor of such a process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ENVIRONMENT = "AzureML-PyTorch-1.6-CPU"


def submit(args: argparse.Namespace) -> dict[str, Any]:
    from sandbox import aml

    ws = aml.Workspace.from_config(path=args.workspace_dir)
    arguments: list[Any] = []
    if args.dataset:
        dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), args.dataset))
        mount = dataset.as_named_input("input").as_mount()
        arguments += ["--data_path", mount] if args.data_flag else [mount]
    arguments += list(args.args)
    config = aml.ScriptRunConfig(source_directory=args.source, script=args.script, arguments=arguments,
                                 compute_target="cpu-cluster")
    config.run_config.environment = ws.environments[ENVIRONMENT]
    experiment = aml.Experiment(workspace=ws, name=args.experiment)
    t0 = time.time()
    start = time.perf_counter()
    run = experiment.submit(config)
    seconds = time.perf_counter() - start
    return {"t0": t0, "submit_s": seconds, "run_id": run.id}


def upload(args: argparse.Namespace) -> dict[str, Any]:
    from sandbox import aml

    datastore = aml.Workspace.from_config(path=args.workspace_dir).get_default_datastore()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        cpu = time.process_time()
        start = time.perf_counter()
        datastore.upload(src_dir=args.src, target_path=args.target, overwrite=True)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return {"upload_s": seconds, "upload_cpu_s": cpu, "container": datastore.container_name}


def imports(_args: argparse.Namespace) -> dict[str, Any]:
    import azureml.core  # noqa: F401

    return {}


def peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux keeps the high-water mark of the address space a process had before
    ``exec``, so a child forked from a large parent (the bench, which imported torch) reports the
    parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_submit = commands.add_parser("submit")
    p_submit.add_argument("--workspace-dir", required=True)
    p_submit.add_argument("--source", required=True)
    p_submit.add_argument("--script", required=True)
    p_submit.add_argument("--experiment", default="bench")
    p_submit.add_argument("--dataset", default=None, help="datastore path of a FileDataset to mount as the input")
    p_submit.add_argument("--data-flag", action="store_true", help="pass the dataset as --data_path MOUNT")
    p_submit.add_argument("args", nargs="*")
    p_upload = commands.add_parser("upload")
    p_upload.add_argument("--workspace-dir", required=True)
    p_upload.add_argument("--src", required=True)
    p_upload.add_argument("--target", required=True)
    commands.add_parser("imports")
    args = parser.parse_args(argv)
    result = {"submit": submit, "upload": upload, "imports": imports}[args.command](args)
    result["peak_rss"] = peak_rss()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
