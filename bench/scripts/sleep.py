"""Stays running for a while (a run that occupies a node): ``python sleep.py [DATA_PATH] SECONDS``."""

import sys
import time

print("BENCH_SLEEP start", flush=True)
time.sleep(float(sys.argv[-1]))
print("BENCH_SLEEP end", flush=True)
