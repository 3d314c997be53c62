"""CIFAR-10 from its on-disk python format, checked for structure instead of MD5.

``torchvision.datasets.CIFAR10`` refuses any folder whose files do not have the real dataset's MD5
sums, and reports a missing or broken folder with a generic RuntimeError (or a traceback from inside
``pickle``). ``CIFAR10`` here is the same dataset class (same ``__getitem__``, transforms, ``data``,
``targets``, ``classes``) whose integrity check verifies the layout and the content of the files, so
the real dataset and a generated one both load, and a bad folder gives one clear ``CIFAR10DataError``.

This file is shipped with ``train.py`` to the compute target: it imports only torch, torchvision,
numpy and the standard library.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torchvision
from torchvision.datasets.utils import download_and_extract_archive

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, *TEST_FILES, META_FILE)
PIXELS = 3 * 32 * 32
NUM_CLASSES = 10
EXPECTED = f"expected folder '{BASE_FOLDER}' with data_batch_1..5, test_batch, batches.meta"
HINT = "generate a stand-in with 'python control/prepare-data.py --out DIR' or download the real CIFAR-10"
_LISTED_ENTRIES = 12
# The only globals a CIFAR-10 pickle needs: numpy arrays (numpy 1.x and 2.x module names) and scalars.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class CIFAR10DataError(Exception):
    """A CIFAR-10 folder that cannot be used; ``str()`` is one line saying what is wrong."""


class CIFAR10NotFoundError(CIFAR10DataError, FileNotFoundError):
    """The data path, the ``cifar-10-batches-py`` folder or one of its files is missing."""


class CIFAR10FormatError(CIFAR10DataError, ValueError):
    """A CIFAR-10 file exists but is corrupt or does not hold what CIFAR-10 holds."""


def _listing(directory: Path) -> str:
    """``['a', 'b', ... (N more)]`` of a directory's entries, for error messages."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        return f"(cannot list it: {err.strerror})"
    shown = repr(names[:_LISTED_ENTRIES])
    return shown if len(names) <= _LISTED_ENTRIES else f"{shown[:-1]}, ... ({len(names) - _LISTED_ENTRIES} more)]"


def find_batches_folder(root: str | os.PathLike[str]) -> Path:
    """``<root>/cifar-10-batches-py`` if it holds every CIFAR-10 file, else a ``CIFAR10NotFoundError``."""
    root_path = Path(root)
    if not root_path.exists():
        raise CIFAR10NotFoundError(f"CIFAR-10 data not found: '{root}' does not exist; {EXPECTED} in it; {HINT}")
    if not root_path.is_dir():
        raise CIFAR10NotFoundError(
            f"CIFAR-10 data not found: '{root}' is a file, not a directory; {EXPECTED} in it; {HINT}"
        )
    folder = root_path / BASE_FOLDER
    if not folder.is_dir():
        fix = HINT
        if (root_path / TRAIN_FILES[0]).exists():
            fix = f"this looks like the '{BASE_FOLDER}' folder itself: pass its parent directory"
        raise CIFAR10NotFoundError(
            f"CIFAR-10 data not found under '{root}': {EXPECTED}; found: {_listing(root_path)}; {fix}"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise CIFAR10NotFoundError(
            f"CIFAR-10 data under '{folder}' is incomplete: missing {missing}; {EXPECTED}; "
            f"found: {_listing(folder)}; {HINT}"
        )
    return folder


class _CIFAR10Unpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 files hold (no arbitrary code from a foreign pickle)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to '{module}.{name}', which a CIFAR-10 file never does")
        return super().find_class(module, name)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR-10 file's dict, read as torchvision does (``encoding='latin1'``: str keys)."""
    try:
        with open(path, "rb") as handle:
            loaded = _CIFAR10Unpickler(handle, encoding="latin1").load()
    except OSError as err:
        raise CIFAR10FormatError(f"CIFAR-10 file '{path}' cannot be read: {err.strerror}") from err
    except Exception as err:  # a damaged pickle raises UnpicklingError, EOFError, ValueError, KeyError, ...
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' is corrupt or not a CIFAR-10 pickle ({_one_line(err)}); "
            "regenerate or re-download the data set"
        ) from err
    if not isinstance(loaded, dict):
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' holds a {type(loaded).__name__}, expected a dict; regenerate or re-download it"
        )
    return loaded


def read_batch(path: Path) -> dict[str, Any]:
    """A batch file's dict, checked: ``data`` uint8 (rows, 3072), ``labels`` ``rows`` ints in 0..9."""
    batch = load_pickle(path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' lacks key(s) {missing}: found {sorted(map(str, batch))}, "
            "expected 'batch_label', 'labels', 'data', 'filenames'; regenerate or re-download it"
        )
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        seen = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' has 'data' {seen}, expected uint8 (rows, {PIXELS}); regenerate or re-download it"
        )
    label_array = np.asarray(labels)
    if label_array.shape != (data.shape[0],) or label_array.dtype.kind not in "iu":
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' has {label_array.size} 'labels' of type {label_array.dtype} for "
            f"{data.shape[0]} images, expected one integer per image; regenerate or re-download it"
        )
    if label_array.size and not 0 <= label_array.min() <= label_array.max() < NUM_CLASSES:
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' has labels {label_array.min()}..{label_array.max()}, "
            f"expected 0..{NUM_CLASSES - 1}; regenerate or re-download it"
        )
    return batch


def read_label_names(path: Path) -> list[str]:
    """``batches.meta``'s ``label_names``, checked: 10 strings."""
    names = load_pickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, str) for n in names):
        raise CIFAR10FormatError(
            f"CIFAR-10 file '{path}' has label_names {names!r:.80}, expected a list of {NUM_CLASSES} names; "
            "regenerate or re-download it"
        )
    return names


class CIFAR10(torchvision.datasets.CIFAR10):
    """``torchvision.datasets.CIFAR10`` whose integrity check verifies structure, not MD5.

    Same arguments and behaviour as torchvision's class; a missing or malformed folder raises a
    ``CIFAR10DataError`` (``CIFAR10NotFoundError`` or ``CIFAR10FormatError``) instead of a RuntimeError.
    """

    def _check_integrity(self) -> bool:
        folder = find_batches_folder(self.root)
        for name in TRAIN_FILES if self.train else TEST_FILES:
            read_batch(folder / name)
        return True

    def _load_meta(self) -> None:
        self.classes = read_label_names(Path(self.root, BASE_FOLDER, META_FILE))
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    def download(self) -> None:
        """Download and extract the real archive unless every file is already there (no MD5 check)."""
        if all(Path(self.root, BASE_FOLDER, name).is_file() for name in REQUIRED_FILES):
            return
        download_and_extract_archive(self.url, self.root, filename=self.filename, md5=self.tgz_md5)
