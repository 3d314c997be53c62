"""Reads the six CIFAR-10 batch files, raw and as torchvision does (pickle, latin1), and prints the times.

    python read_batches.py DATA_PATH [--copy-to DIR] [--passes N]

For each source (DATA_PATH, and with ``--copy-to`` a copy of its batch files made there first, not timed,
written through to the disk) each pass times, in this order:

- ``read``: the files read into one reused buffer (``readinto``): the file system alone, no allocation;
- ``unpickle``: ``pickle.load(f, encoding="latin1")`` of each file, as torchvision's CIFAR10 does (numpy,
  which the pickles need, is imported before any clock starts), with the process's minor page faults.

each twice: first with the files dropped from the page cache (posix_fadvise DONTNEED, not timed), so the
reads come from the disk ("cold"), then again as they are cached ("warm"). Passes alternate between the
sources. One line per source: ``BENCH_READ source=... bytes=... read_cold=... read_warm=...
unpickle_cold=... unpickle_warm=... faults_cold=... faults_warm=...``: seconds and faults summed over the
passes, bytes of one pass.
"""

import argparse
import os
import pickle
import resource
import shutil
import time

import numpy  # noqa: F401  (what the pickles refer to: imported here, not inside the timed reads)

FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

parser = argparse.ArgumentParser()
parser.add_argument("data_path")
parser.add_argument("--copy-to", default=None)
parser.add_argument("--passes", type=int, default=3)
args = parser.parse_args()
sources = {"given": [os.path.join(args.data_path, "cifar-10-batches-py", name) for name in FILES]}
if args.copy_to:
    os.makedirs(args.copy_to, exist_ok=True)
    copies = []
    for path in sources["given"]:
        target = os.path.join(args.copy_to, os.path.basename(path))
        shutil.copyfile(path, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())  # written back, so that DONTNEED can drop its pages
        copies.append(target)
    sources["copy"] = copies


def drop(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


buffer = bytearray(max(os.path.getsize(p) for p in sources["given"]))
view = memoryview(buffer)


def read(paths):
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(view):
                pass
    return time.perf_counter() - start, 0


def unpickle(paths):
    before = faults()
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        if batch["data"].reshape(-1, 3, 32, 32).shape[0] <= 0:
            raise SystemExit(f"{path}: no images")
        del batch
    return time.perf_counter() - start, faults() - before


totals = {name: dict.fromkeys(("read_cold", "read_warm", "unpickle_cold", "unpickle_warm", "faults_cold",
                               "faults_warm"), 0.0) for name in sources}
for _ in range(args.passes):
    for name, paths in sources.items():
        for what, measure in (("read", read), ("unpickle", unpickle)):
            drop(paths)
            for state in ("cold", "warm"):
                seconds, count = measure(paths)
                totals[name][f"{what}_{state}"] += seconds
                if what == "unpickle":
                    totals[name][f"faults_{state}"] += count
for name, paths in sources.items():
    size = sum(os.path.getsize(p) for p in paths)
    values = " ".join(f"{key}={value:.6f}" if not key.startswith("faults") else f"{key}={int(value)}"
                      for key, value in totals[name].items())
    print(f"BENCH_READ source={name} bytes={size} {values}", flush=True)
