"""3. Mount materialisation: ``DatasetCache.materialize`` of the full CIFAR-10, cold and warm.

Cold: a fresh cache folder each time (every blob downloaded). Warm: the same cache, data unchanged
(one listing, the version found complete). References, interleaved: the same blobs downloaded with
raw azure-storage-blob calls (a sequential loop, and a thread pool tuned like upload's) into a fresh
folder, and, for warm, the floor of any change check: one listing of the dataset's blobs.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import Context, Row, Section, fmt_s, interleave, median, noise, spread


def _raw_download(ctx: Context, container: str, prefix: str, workers: int, per_blob: int) -> float:
    import requests
    from azure.storage.blob import BlobServiceClient
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=workers * per_blob + 2))
    service = BlobServiceClient.from_connection_string(ctx.settings.connection_string, session=session)
    box = service.get_container_client(container)
    target = ctx.mkdtemp("raw-download-")

    def one(name: str) -> None:
        path = target / name[len(prefix):].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            box.download_blob(name, max_concurrency=per_blob).readinto(handle)

    start = time.perf_counter()
    names = [blob.name for blob in box.list_blobs(name_starts_with=prefix)]
    if workers == 1:
        for name in names:
            one(name)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as executor:
            for future in [executor.submit(one, name) for name in names]:
                future.result()
    elapsed = time.perf_counter() - start
    service.close()
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


def run(ctx: Context) -> Section:
    from sandbox.datapaths import DatastorePath
    from sandbox.fake_mount import DatasetCache
    from sandbox.storage import BlobStore

    section = Section(3, "Mount materialisation of the full CIFAR-10 (`DatasetCache.materialize`)")
    path = ctx.dataset_on_datastore()
    container = ctx.workspace().get_default_datastore().container_name
    sources = (DatastorePath("workspaceblobstore", container, path),)
    prefix = path.rstrip("/") + "/"
    store = BlobStore(ctx.settings)
    warm_cache = DatasetCache(store, ctx.mkdtemp("cache-warm-"))
    warm_cache.materialize("input", sources).release()

    def cold() -> float:
        root = ctx.mkdtemp("cache-cold-")
        start = time.perf_counter()
        item = DatasetCache(store, root).materialize("input", sources)
        elapsed = time.perf_counter() - start
        item.release()
        if item.fetched != 9:
            raise RuntimeError(f"cold materialise fetched {item.fetched} files, 9 expected")
        shutil.rmtree(root, ignore_errors=True)
        return elapsed

    def warm() -> float:
        start = time.perf_counter()
        item = warm_cache.materialize("input", sources)
        elapsed = time.perf_counter() - start
        item.release()
        if item.fetched:
            raise RuntimeError(f"warm materialise fetched {item.fetched} files")
        return elapsed

    def listing() -> float:
        start = time.perf_counter()
        store.list_blobs(container, prefix)
        return time.perf_counter() - start

    ctx.log("3: tuning the raw download pool")
    tuning = {per_blob: _raw_download(ctx, container, prefix, 9, per_blob) for per_blob in (1, 2, 4, 8)}
    per_blob = min(tuning, key=lambda k: tuning[k])
    section.notes.append("Raw download pool tuning (9 threads): " + ", ".join(
        f"{k} per blob: {fmt_s(v)}" for k, v in tuning.items()) + f"; chosen: {per_blob} per blob.")
    reps = 3 if ctx.quick else 5
    methods: dict[str, Any] = {
        "materialize cold": cold,
        "raw pool download": lambda: _raw_download(ctx, container, prefix, 9, per_blob),
        "raw sequential download": lambda: _raw_download(ctx, container, prefix, 1, 1),
        "materialize warm": warm,
        "one listing": listing,
    }
    samples = interleave(methods, {name: (reps if "sequential" not in name else 3) for name in methods}, ctx.log)
    section.samples.update({f"3 {k}": v for k, v in samples.items()})
    store.close()
    cold, pool, seq = (samples[k] for k in ("materialize cold", "raw pool download", "raw sequential download"))
    size_mb = sum(f.stat().st_size for f in Path(ctx.cifar()).rglob("*") if f.is_file()) / 1e6
    measured = f"{spread(cold)}; {size_mb / median(cold):.0f} MB/s"
    section.rows.append(Row(
        "3a materialise cold (fresh cache folder, 9 files)", measured,
        f"raw thread pool download ({per_blob} per blob): {spread(pool)}",
        f"{median(pool) / median(cold):.2f}x the speed", noise(cold, pool)))
    section.rows.append(Row(
        "3a materialise cold (fresh cache folder, 9 files)", measured, f"raw sequential download: {spread(seq)}",
        f"{median(seq) / median(cold):.2f}x the speed", noise(cold, seq)))
    warm, listed = samples["materialize warm"], samples["one listing"]
    section.rows.append(Row(
        "3b materialise warm (data unchanged)", spread(warm), f"one listing of the dataset's blobs: {spread(listed)}",
        f"{median(warm) / median(listed):.1f}x the time", noise(warm, listed), "< 0.5 s", median(warm) < 0.5))
    return section
