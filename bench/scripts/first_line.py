"""Prints one line, after the same imports as src/train/train.py: the time at which a script's output begins."""

import time

import torch  # noqa: F401
import torchvision  # noqa: F401
from azureml.core import Run  # noqa: F401

print(f"BENCH_FIRST_LINE {time.time():.6f}", flush=True)
