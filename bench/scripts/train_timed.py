"""Runs train.py (beside this file) as ``python train.py ARGS`` would, and prints its wall time.

The imports train.py needs are done before the clock starts, so the time is the script's own work:
loading the data set, the training loop, saving the model.
"""

import os
import runpy
import sys
import time

import torch
import torchvision  # noqa: F401
from azureml.core import Run  # noqa: F401

here = os.path.dirname(os.path.abspath(__file__))
sys.argv = [os.path.join(here, "train.py"), *sys.argv[1:]]
print(f"BENCH_TORCH threads={torch.get_num_threads()} cpus={len(os.sched_getaffinity(0))}", flush=True)
start = time.perf_counter()
runpy.run_path(sys.argv[0], run_name="__main__")
elapsed = time.perf_counter() - start
print(f"BENCH_TRAIN seconds={elapsed:.6f}", flush=True)
