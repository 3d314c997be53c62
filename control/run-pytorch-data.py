"""run-pytorch-data.py: the tutorial's control script, with ``--target local|azure``.

    python control/run-pytorch-data.py                  # the local stack
    python control/run-pytorch-data.py --target azure   # your Azure ML workspace (config.json)

It submits src/train/train.py with the CIFAR-10 FileDataset mounted as ``--data_path``, prints the
run's URL and exits; the run goes on. The only difference from the tutorial: the Azure ML names come
from ``connect(args.target)`` (and the source folder is this repository's src/train).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sandbox.target import add_target_argument, connect, error_message, known_errors

SOURCE_DIRECTORY = str(Path(__file__).resolve().parents[1] / "src" / "train")


def make_config(aml: SimpleNamespace, ws: Any, source_directory: str = SOURCE_DIRECTORY) -> Any:
    """The tutorial's dataset and ScriptRunConfig, for either target."""
    datastore = ws.get_default_datastore()
    dataset = aml.Dataset.File.from_files(path=(datastore, 'datasets/cifar10'))

    config = aml.ScriptRunConfig(
        source_directory=source_directory,
        script='train.py',
        compute_target='cpu-cluster',
        arguments=[
            '--data_path', dataset.as_named_input('input').as_mount(),
            '--learning_rate', 0.003,
            '--momentum', 0.92],
    )

    # use curated pytorch environment
    env = ws.environments['AzureML-PyTorch-1.6-CPU']
    config.run_config.environment = env
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Submit the tutorial's training run.")
    add_target_argument(parser)
    parser.add_argument("--experiment", default="day1-experiment-data", help="experiment name")
    args = parser.parse_args(argv)
    try:
        aml = connect(args.target)
        # --- the tutorial's run-pytorch-data.py ---
        ws = aml.Workspace.from_config()
        experiment = aml.Experiment(workspace=ws, name=args.experiment)
        config = make_config(aml, ws)
        run = experiment.submit(config)
        aml_url = run.get_portal_url()
        print("Submitted to compute cluster. Click link below")
        print("")
        print(aml_url)
    except known_errors() as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
