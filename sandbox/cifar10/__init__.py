"""CIFAR-10 on disk, offline: a generated stand-in laid out exactly as torchvision's download, or the real one.

``generate(out)`` writes what ``torchvision.datasets.CIFAR10(root=out, download=True)`` leaves behind::

    out/cifar-10-python.tar.gz          gzip'd tar of the folder below (as the real archive)
    out/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta, readme.html

The parts: ``layout`` (file names, classes, the real sizes), ``pickler`` (the batch files as Python 2's
``cPickle`` wrote them), ``renderer`` (labels, synthetic images, file names) and ``archive`` (the
.tar.gz, padded to an exact size).

At full size the byte sizes match the real dataset: each batch file (the file names' lengths are chosen
for it), ``batches.meta`` (byte for byte: its MD5 is the one torchvision checks), ``readme.html`` and
the archive (zero padding after the tar end-of-archive marker, in stored deflate blocks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sandbox.cifar10.archive import ARCHIVE_MTIME, GZIP_LEVEL, write_archive
from sandbox.cifar10.layout import (
    ARCHIVE_NAME,
    BASE_FOLDER,
    BATCH_FILES,
    FOLDER_FILES,
    FULL_TRAIN_IMAGES,
    LABEL_NAMES,
    META_FILE,
    MIN_IMAGES,
    PIXELS,
    README_FILE,
    README_HTML,
    REAL_SIZES,
    ROWS_PER_FULL_BATCH,
    TEST_FILE,
    TRAIN_FILES,
    URL,
)
from sandbox.cifar10.pickler import _Py2Pickler as _Py2Pickler
from sandbox.cifar10.pickler import py2_pickle_bytes, py2_pickle_dump, py2_pickle_size
from sandbox.cifar10.renderer import (
    LABEL_NOISE,
    balanced_labels,
    batch_dict,
    batch_labels,
    batch_rows,
    build_batch,
    make_filenames,
    meta_dict,
    render_images,
)
from sandbox.errors import ConfigurationError, SandboxError

__all__ = [
    "ARCHIVE_MTIME",
    "ARCHIVE_NAME",
    "BASE_FOLDER",
    "BATCH_FILES",
    "FOLDER_FILES",
    "FULL_TRAIN_IMAGES",
    "GZIP_LEVEL",
    "LABEL_NAMES",
    "LABEL_NOISE",
    "META_FILE",
    "MIN_IMAGES",
    "PIXELS",
    "README_FILE",
    "README_HTML",
    "REAL_SIZES",
    "ROWS_PER_FULL_BATCH",
    "TEST_FILE",
    "TRAIN_FILES",
    "URL",
    "DatasetDownloadError",
    "Progress",
    "batch_dict",
    "batch_labels",
    "batch_rows",
    "build_batch",
    "fetch_real",
    "generate",
    "make_filenames",
    "meta_dict",
    "py2_pickle_bytes",
    "py2_pickle_dump",
    "py2_pickle_size",
    "render_images",
    "write_archive",
]

Progress = Callable[[str], None]


class DatasetDownloadError(SandboxError, ConnectionError):
    """The real CIFAR-10 could not be downloaded."""


def _dataset_paths(out_dir: Path) -> list[Path]:
    """The 9 files of a CIFAR-10 download: the folder's 8, then the archive."""
    return [out_dir / BASE_FOLDER / name for name in FOLDER_FILES] + [out_dir / ARCHIVE_NAME]


def _check_arguments(out_dir: Path, images: int | None, seed: int) -> None:
    if images is not None and (isinstance(images, bool) or not isinstance(images, int)):
        raise ConfigurationError(f"images={images!r} must be a whole number (or None for the full data set)")
    if images is not None and not MIN_IMAGES <= images <= FULL_TRAIN_IMAGES:
        raise ConfigurationError(
            f"images={images} is out of range: expected {MIN_IMAGES}..{FULL_TRAIN_IMAGES} training images "
            f"(at least 2 per batch file; the real CIFAR-10 has {FULL_TRAIN_IMAGES}), or None for the full size"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigurationError(f"seed={seed!r} must be a whole number >= 0")
    for path in (out_dir, out_dir / BASE_FOLDER):
        if path.exists() and not path.is_dir():
            raise ConfigurationError(f"'{path}' is a file, not a directory: choose another output directory")


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to ``path.tmp`` and rename, so that an interrupted run leaves no half file under the real name."""
    partial = path.with_name(path.name + ".tmp")
    try:
        with open(partial, "wb") as handle:
            write(handle)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def generate(
    out_dir: Path, *, images: int | None = None, seed: int = 0, progress: Progress | None = None
) -> list[Path]:
    """Write a generated CIFAR-10 under ``out_dir`` as torchvision's download does; return the 9 paths.

    ``images=None`` is the full size (5 x 10,000 training images, 10,000 test images, the real byte
    sizes); ``images=N`` spreads N training images over the 5 batch files with a test batch of N/5.
    The same ``seed`` gives the same bytes. Existing generated files are overwritten.
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, images, seed)
    report = progress or (lambda _message: None)
    folder = out_dir / BASE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    full_size = images is None or images == FULL_TRAIN_IMAGES
    rows = batch_rows(None if full_size else images)
    train_total = sum(rows[name] for name in TRAIN_FILES)
    label_rng = np.random.default_rng([seed, 100])
    all_labels = {TEST_FILE: balanced_labels(rows[TEST_FILE], label_rng)}
    train_labels = balanced_labels(train_total, label_rng)
    first_index = {TEST_FILE: train_total}
    offset = 0
    for name in TRAIN_FILES:
        all_labels[name], first_index[name] = train_labels[offset : offset + rows[name]], offset
        offset += rows[name]

    for name in BATCH_FILES:
        path = folder / name
        report(f"writing {path} ({rows[name]} images)")
        target = REAL_SIZES[name] if full_size else None
        batch = build_batch(name, rows[name], all_labels[name], first_index[name], seed, target)
        _write_atomically(path, lambda handle, batch=batch: py2_pickle_dump(batch, handle))
    for name, content in ((META_FILE, py2_pickle_bytes(meta_dict())), (README_FILE, README_HTML)):
        _write_atomically(folder / name, lambda handle, content=content: handle.write(content))
    archive = out_dir / ARCHIVE_NAME
    report(f"compressing {archive}")
    target = REAL_SIZES[ARCHIVE_NAME] if full_size else None
    _write_atomically(archive, lambda handle: write_archive(handle, folder, target))
    if target is not None and archive.stat().st_size != target:
        report(f"note: {archive.name} is {archive.stat().st_size} bytes; it compressed too poorly to pad to {target}")
    return _dataset_paths(out_dir)


def fetch_real(out_dir: Path) -> list[Path]:
    """Download the real CIFAR-10 with ``torchvision.datasets.CIFAR10(download=True)``; return the 9 paths."""
    from torchvision.datasets import CIFAR10  # heavy import, only here

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"'{out_dir}' is a file, not a directory: choose another output directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        CIFAR10(root=str(out_dir), train=True, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ... for a failed download
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatasetDownloadError(
            f"could not download the real CIFAR-10 from {URL} ({reason}); "
            "without network access generate a stand-in instead (sandbox.cifar10.generate, "
            "'control/prepare-data.py' without --real)"
        ) from err
    return _dataset_paths(out_dir)
