"""Reads every CIFAR-10 batch file as torchvision does (pickle, latin1) and prints how long it took.

    python read_batches.py DATA_PATH [--cold] [--passes N]

Each pass reads the six batch files once; the time is the sum over the passes (numpy, which the
pickles need, is imported before the clock starts). ``--cold`` asks the kernel before each pass to
drop these files from the page cache (posix_fadvise DONTNEED, not timed), so the reads come from the
disk; without it the files are read as they are cached.
"""

import argparse
import os
import pickle
import time

import numpy  # noqa: F401  (what the pickles refer to: imported here, not inside the timed reads)

FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

parser = argparse.ArgumentParser()
parser.add_argument("data_path")
parser.add_argument("--cold", action="store_true")
parser.add_argument("--passes", type=int, default=3)
args = parser.parse_args()
paths = [os.path.join(args.data_path, "cifar-10-batches-py", name) for name in FILES]
elapsed = 0.0
size = images = 0
for _ in range(args.passes):
    if args.cold:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images += int(batch["data"].reshape(-1, 3, 32, 32).shape[0])
        size += os.path.getsize(path)
        del batch
    elapsed += time.perf_counter() - start
print(f"BENCH_READ seconds={elapsed:.6f} bytes={size} images={images}", flush=True)
