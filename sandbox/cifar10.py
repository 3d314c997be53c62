"""CIFAR-10 on disk, offline: a generated stand-in laid out exactly as torchvision's download, or the real one.

``generate(out)`` writes what ``torchvision.datasets.CIFAR10(root=out, download=True)`` leaves behind::

    out/cifar-10-python.tar.gz          gzip'd tar of the folder below (as the real archive)
    out/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta, readme.html

The batch files are Python-2 protocol-2 pickles as the real ones (written by ``cPickle``): keys and
strings are Python-2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``), so ``pickle.load(f, encoding='bytes')``
gives ``b'data'`` and ``encoding='latin1'`` (torchvision) gives ``'data'``; the image array refers to
``numpy.core.multiarray._reconstruct``, which numpy 1.x and 2.x both load.

At full size the byte sizes match the real dataset: each batch file (the file names' lengths are chosen
for it), ``batches.meta`` (byte for byte: its MD5 is the one torchvision checks), ``readme.html`` and
the archive (zero padding after the tar end-of-archive marker, in stored deflate blocks). The images
are synthetic: a class-dependent colour and grating plus noise, so that a network can learn them.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sandbox.errors import ConfigurationError, SandboxError

BASE_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
README_FILE = "readme.html"
FOLDER_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE, README_FILE)
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ROWS_PER_FULL_BATCH = 10_000
FULL_TRAIN_IMAGES = ROWS_PER_FULL_BATCH * len(TRAIN_FILES)
MIN_IMAGES = 10
PIXELS = 3 * 32 * 32

# Byte sizes of the real dataset, matched by a full-size generate().
REAL_SIZES: dict[str, int] = {
    "data_batch_1": 31_035_704,
    "data_batch_2": 31_035_320,
    "data_batch_3": 31_035_999,
    "data_batch_4": 31_035_696,
    "data_batch_5": 31_035_623,
    "test_batch": 31_035_526,
    "batches.meta": 158,
    "readme.html": 88,
    ARCHIVE_NAME: 170_498_071,
}
# The real readme.html (88 bytes): a redirect to the dataset's page.
README_HTML = b'<meta HTTP-EQUIV="REFRESH" content="0; URL=http://www.cs.toronto.edu/~kriz/cifar.html">\n'
# mtime of every archive member and of the gzip header, so that the same seed gives the same bytes.
ARCHIVE_MTIME = 1_244_000_000
GZIP_LEVEL = 6
_CHUNK_ROWS = 1_000
_STORED_BLOCK_MAX = 65_535

Progress = Callable[[str], None]


class DatasetDownloadError(SandboxError, ConnectionError):
    """The real CIFAR-10 could not be downloaded."""


# --------------------------------------------------------------------------- Python-2 pickles


class _Py2Pickler:
    """Writes protocol-2 pickles as Python 2's ``cPickle`` did (memo from 1, str as BINSTRING).

    Handles what CIFAR-10 holds: dict, list, tuple, str, int, bool, None and 2-D uint8 numpy arrays.
    Every container and string is memoised (BINPUT), never looked up again, so the size of a pickle
    does not depend on which Python objects happen to be shared.
    """

    _BATCH = 1_000

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._memo = 1

    def dump(self, obj: object) -> None:
        self._out.write(b"\x80\x02")
        self._save(obj)
        self._out.write(b".")

    def _put(self) -> None:
        index = self._memo
        self._memo += 1
        self._out.write(b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index))

    def _save(self, obj: object) -> None:
        if obj is None:
            self._out.write(b"N")
        elif isinstance(obj, bool):
            self._out.write(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self._save_int(obj)
        elif isinstance(obj, str):
            self._save_string(obj.encode("latin1"))
        elif isinstance(obj, tuple):
            self._save_tuple(obj)
        elif isinstance(obj, list):
            self._out.write(b"]")
            self._put()
            self._save_batched([(item,) for item in obj], b"a", b"e")
        elif isinstance(obj, dict):
            self._out.write(b"}")
            self._put()
            self._save_batched(list(obj.items()), b"s", b"u")
        elif isinstance(obj, np.ndarray):
            self._save_array(obj)
        else:
            raise TypeError(f"cannot pickle {type(obj).__name__} as a CIFAR-10 Python-2 pickle")

    def _save_int(self, value: int) -> None:
        if 0 <= value < 256:
            self._out.write(b"K" + bytes([value]))
        elif 0 <= value < 65_536:
            self._out.write(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._out.write(b"J" + struct.pack("<i", value))
        else:
            raise ValueError(f"integer {value} does not fit the 32-bit BININT opcode")

    def _save_string(self, data: bytes | memoryview) -> None:
        size = len(data)
        self._out.write(b"U" + bytes([size]) if size < 256 else b"T" + struct.pack("<i", size))
        self._out.write(data)
        self._put()

    def _save_tuple(self, items: tuple[object, ...]) -> None:
        if not items:
            self._out.write(b")")
            return
        if len(items) > 3:
            self._out.write(b"(")
        for item in items:
            self._save(item)
        self._out.write(b"t" if len(items) > 3 else b"\x85\x86\x87"[len(items) - 1 : len(items)])
        self._put()

    def _save_batched(self, entries: list[tuple[object, ...]], one: bytes, many: bytes) -> None:
        """List items (1-tuples) or dict items (pairs) in batches of 1000: MARK ... APPENDS/SETITEMS."""
        for start in range(0, len(entries), self._BATCH):
            chunk = entries[start : start + self._BATCH]
            if len(chunk) > 1:
                self._out.write(b"(")
            for entry in chunk:
                for value in entry:
                    self._save(value)
            self._out.write(many if len(chunk) > 1 else one)

    def _save_global(self, module: str, name: str) -> None:
        self._out.write(f"c{module}\n{name}\n".encode())
        self._put()

    def _save_array(self, array: np.ndarray) -> None:
        """``ndarray.__reduce__`` as numpy wrote it under Python 2, for a C-contiguous uint8 array."""
        if array.dtype != np.uint8 or not array.flags.c_contiguous:
            raise TypeError(f"only C-contiguous uint8 arrays are supported, got {array.dtype}")
        self._save_global("numpy.core.multiarray", "_reconstruct")
        self._save_global("numpy", "ndarray")
        self._save_tuple((0,))
        self._save("b")
        self._out.write(b"\x87")
        self._put()
        self._out.write(b"R")
        self._put()
        # state: (version, shape, dtype, is_fortran, raw data)
        self._out.write(b"(")
        self._save(1)
        self._save(tuple(array.shape))
        self._save_uint8_dtype()
        self._save(False)
        self._save_string(memoryview(array).cast("B"))
        self._out.write(b"t")
        self._put()
        self._out.write(b"b")

    def _save_uint8_dtype(self) -> None:
        self._save_global("numpy", "dtype")
        self._save(("u1", 0, 1))
        self._out.write(b"R")
        self._put()
        self._save((3, "|", None, None, None, -1, -1, 0))
        self._out.write(b"b")


class _CountingSink:
    """A write-only file that only counts bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        return len(data)


def py2_pickle_bytes(obj: object) -> bytes:
    """``obj`` as a Python-2 protocol-2 pickle (as ``cPickle.dump(obj, f, 2)`` wrote it)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer).dump(obj)
    return buffer.getvalue()


def py2_pickle_size(obj: object) -> int:
    """Byte size of ``py2_pickle_bytes(obj)`` without building it."""
    sink = _CountingSink()
    _Py2Pickler(sink).dump(obj)  # type: ignore[arg-type]
    return sink.size


# --------------------------------------------------------------------------- content


def meta_dict() -> dict[str, object]:
    """``batches.meta``, keys in the real file's order."""
    return {"num_cases_per_batch": ROWS_PER_FULL_BATCH, "label_names": list(LABEL_NAMES), "num_vis": PIXELS}


def batch_dict(label: str, labels: list[int], data: np.ndarray, filenames: list[str]) -> dict[str, object]:
    """One batch file's dict, keys in the real files' order."""
    return {"batch_label": label, "labels": labels, "data": data, "filenames": filenames}


def batch_labels() -> dict[str, str]:
    """File name → the ``batch_label`` the real file carries."""
    labels = {name: f"training batch {i} of {len(TRAIN_FILES)}" for i, name in enumerate(TRAIN_FILES, 1)}
    labels[TEST_FILE] = "testing batch 1 of 1"
    return labels


def batch_rows(images: int | None) -> dict[str, int]:
    """Rows of each batch file: ``images`` spread over the 5 training batches, a test batch of a fifth."""
    if images is None:
        return {name: ROWS_PER_FULL_BATCH for name in (*TRAIN_FILES, TEST_FILE)}
    base, extra = divmod(images, len(TRAIN_FILES))
    rows = {name: base + (1 if i < extra else 0) for i, name in enumerate(TRAIN_FILES)}
    rows[TEST_FILE] = max(2, round(images / len(TRAIN_FILES)))
    return rows


# Words of the kind the real file names carry ('leptodactylus_pentadactylus_s_000004.png').
_STEMS: tuple[tuple[str, ...], ...] = tuple(
    tuple(words.split())
    for words in (
        (
            "jet plane airbus bomber airliner biplane jetliner seaplane jumbo_jet monoplane twinjet "
            "attack_plane propeller_plane stealth_bomber fighter_aircraft amphibious_aircraft"
        ),
        (
            "car cab auto taxi coupe sedan racer roadster motorcar limousine hatchback sports_car estate_car "
            "compact_car convertible station_wagon police_cruiser"
        ),
        (
            "jay emu bird wren finch robin ostrich sparrow warbler songbird cassowary passerine wading_bird "
            "flightless_bird bird_of_passage"
        ),
        (
            "cat puss kitty tabby mouser tomcat kitten pussycat alley_cat house_cat tabby_cat felis_catus "
            "domestic_cat tortoiseshell egyptian_cat"
        ),
        (
            "elk deer stag fawn sambar wapiti muntjac roe_deer red_deer mule_deer axis_deer whitetail "
            "fallow_deer virginia_deer white_tailed_deer"
        ),
        (
            "dog pup cur mutt puppy beagle terrier pekinese dachshund maltese_dog toy_spaniel toy_terrier "
            "cocker_spaniel japanese_spaniel english_toy_spaniel"
        ),
        (
            "toad frog anuran bullfrog wood_frog tree_frog true_frog toad_frog spadefoot natterjack "
            "grass_frog pickerel_frog tailed_frog leopard_frog leptodactylus_pentadactylus"
        ),
        (
            "pony mare colt foal horse filly mustang arabian stallion racehorse appaloosa quarter_horse "
            "equus_caballus thoroughbred tennessee_walker"
        ),
        (
            "boat ship liner tanker steamer fireboat freighter lightship cargo_ship cruise_ship ocean_liner "
            "merchant_ship container_ship passenger_ship transport_ship"
        ),
        (
            "van semi lorry truck pickup tow_truck motortruck dump_truck fire_truck moving_van tipper_truck "
            "garbage_truck trailer_truck delivery_truck tractor_trailer"
        ),
    )
)
_NAME_SUFFIX_CHARS = len("_s_000000.png")


def make_filenames(
    labels: np.ndarray, first_index: int, rng: np.random.Generator, total_chars: int | None = None
) -> list[str]:
    """File names ``<stem>_s_<6 digits>.png``, the number unique in the data set.

    With ``total_chars`` the stems are chosen so that the names' lengths add up to it.
    """
    stems = [_STEMS[label][rng.integers(len(_STEMS[label]))] for label in labels.tolist()]
    if total_chars is not None:
        _fit_stem_lengths(stems, labels.tolist(), total_chars - _NAME_SUFFIX_CHARS * len(stems), rng)
    return [f"{stem}_s_{first_index + i:06d}.png" for i, stem in enumerate(stems)]


def _fit_stem_lengths(stems: list[str], labels: list[int], total: int, rng: np.random.Generator) -> None:
    """Swap stems for others of the same class until their lengths sum to ``total`` (in place)."""
    missing = total - sum(map(len, stems))
    for _ in range(20):
        for i in rng.permutation(len(stems)).tolist():
            if missing == 0:
                return
            deltas = [len(stem) - len(stems[i]) for stem in _STEMS[labels[i]]]
            best = min(range(len(deltas)), key=lambda k, deltas=deltas, wanted=missing: abs(wanted - deltas[k]))
            missing -= deltas[best]
            stems[i] = _STEMS[labels[i]][best]
    if missing:
        raise ValueError(f"cannot choose file names of {total} characters in all for {len(stems)} images")


# Per class: mean colour (RGB, 0-1), grating angle (radians) and frequency (cycles per image).
_CLASS_COLOURS = np.array(
    [
        [0.55, 0.70, 0.90],  # airplane: sky
        [0.85, 0.20, 0.20],  # automobile: red
        [0.60, 0.70, 0.25],  # bird: olive
        [0.80, 0.55, 0.30],  # cat: ginger
        [0.65, 0.50, 0.30],  # deer: tan
        [0.40, 0.30, 0.25],  # dog: brown
        [0.25, 0.65, 0.25],  # frog: green
        [0.55, 0.30, 0.15],  # horse: chestnut
        [0.20, 0.30, 0.70],  # ship: sea
        [0.85, 0.75, 0.25],  # truck: yellow
    ],
    dtype=np.float32,
)
LABEL_NOISE = 0.25
_CLASS_ANGLES = np.linspace(0.0, np.pi, len(LABEL_NAMES), endpoint=False).astype(np.float32)
_CLASS_FREQUENCIES = np.array([1.5, 3.0, 2.0, 3.5, 2.5, 1.5, 3.0, 2.0, 3.5, 2.5], dtype=np.float32)


def render_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of CIFAR-10 pixels (uint8, (n, 3072): 1024 red, 1024 green, 1024 blue) for ``labels``.

    Each image is its class's colour and grating (or, for a share of LABEL_NOISE, another class's;
    random phase, jittered angle and contrast) plus
    Gaussian noise; values are even, which keeps the archive compressible below the real one's size.
    """
    n = len(labels)
    # Label noise: some images show another (random) class, so the loss levels off near the real
    # CIFAR-10's (about 1.0 here) instead of reaching 0.
    labels = labels.copy()
    swap = rng.random(n) < LABEL_NOISE
    labels[swap] = rng.integers(0, len(LABEL_NAMES), int(swap.sum()))
    grid = np.arange(32, dtype=np.float32) / 32
    angle = _CLASS_ANGLES[labels] + rng.normal(0.0, 0.12, n).astype(np.float32)
    cycles = 2 * np.pi * _CLASS_FREQUENCIES[labels]
    along_x = (cycles * np.cos(angle))[:, None, None] * grid[None, None, :]
    along_y = (cycles * np.sin(angle))[:, None, None] * grid[None, :, None]
    phase = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    grating = np.sin(along_x + along_y + phase)  # (n, 32, 32)
    colour = _CLASS_COLOURS[labels] + rng.normal(0.0, 0.06, (n, 3)).astype(np.float32)
    contrast = rng.uniform(40.0, 70.0, n).astype(np.float32)[:, None, None, None]
    pixels = 255 * colour[:, :, None, None] + contrast * grating[:, None, :, :]
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 20.0
    even = np.clip(np.rint(pixels / 2), 0, 127).astype(np.uint8) * 2
    return even.reshape(n, PIXELS)


def _render_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``render_images`` in chunks, so that float temporaries stay small."""
    data = np.empty((len(labels), PIXELS), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK_ROWS):
        data[start : start + _CHUNK_ROWS] = render_images(labels[start : start + _CHUNK_ROWS], rng)
    return data


def _balanced_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` labels, each class as often as possible, in random order."""
    return rng.permutation(np.arange(count) % len(LABEL_NAMES)).astype(np.int64)


def build_batch(
    name: str, rows: int, labels: np.ndarray, first_index: int, seed: int, target_size: int | None
) -> dict[str, object]:
    """The dict of one batch file; with ``target_size`` the file names make its pickle exactly that long."""
    rng = np.random.default_rng([seed, (*TRAIN_FILES, TEST_FILE).index(name)])
    data = _render_rows(labels, rng)
    label_list = [int(label) for label in labels]
    total_chars = None
    if target_size is not None:
        bare = batch_dict(batch_labels()[name], label_list, data, [""] * rows)
        total_chars = target_size - py2_pickle_size(bare)
    filenames = make_filenames(labels, first_index, rng, total_chars)
    return batch_dict(batch_labels()[name], label_list, data, filenames)


# --------------------------------------------------------------------------- files


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


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
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
    all_labels = {TEST_FILE: _balanced_labels(rows[TEST_FILE], label_rng)}
    train_labels = _balanced_labels(train_total, label_rng)
    first_index = {}
    offset = 0
    for name in TRAIN_FILES:
        all_labels[name], first_index[name] = train_labels[offset : offset + rows[name]], offset
        offset += rows[name]
    first_index[TEST_FILE] = train_total

    paths = []
    for name in (*TRAIN_FILES, TEST_FILE):
        path = folder / name
        report(f"writing {path} ({rows[name]} images)")
        target = REAL_SIZES[name] if full_size else None
        batch = build_batch(name, rows[name], all_labels[name], first_index[name], seed, target)
        _write_atomically(path, lambda handle, batch=batch: _Py2Pickler(handle).dump(batch))
        paths.append(path)
    for name, content in ((META_FILE, py2_pickle_bytes(meta_dict())), (README_FILE, README_HTML)):
        _write_atomically(folder / name, lambda handle, content=content: handle.write(content))
        paths.append(folder / name)
    archive = out_dir / ARCHIVE_NAME
    report(f"compressing {archive}")
    target = REAL_SIZES[ARCHIVE_NAME] if full_size else None
    _write_atomically(archive, lambda handle: write_archive(handle, folder, target))
    if target is not None and archive.stat().st_size != target:
        report(f"note: {archive.name} is {archive.stat().st_size} bytes; it compressed too poorly to pad to {target}")
    paths.append(archive)
    return paths


# --------------------------------------------------------------------------- archive


class _GzipWriter:
    """A gzip member written by hand, so that it can end with stored blocks of padding."""

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL) -> None:
        extra_flags = 2 if level == 9 else 4 if level == 1 else 0
        out.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", ARCHIVE_MTIME) + bytes([extra_flags, 3]))
        self._out = out
        self._written = 10
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._emit(self._deflate.compress(data))
        return len(data)

    def close(self, total_size: int | None = None) -> int:
        """End the member, padded with zeros to ``total_size`` bytes if that is reachable; return its size."""
        if total_size is None:
            self._emit(self._deflate.flush(zlib.Z_FINISH))
        else:
            self._emit(self._deflate.flush(zlib.Z_SYNC_FLUSH))  # byte-aligned, stream still open
            for block in _stored_blocks(total_size - self._written - 8):
                self._crc = zlib.crc32(bytes(block.length), self._crc)
                self._size += block.length
                self._emit(block.header + bytes(block.length))
        self._emit(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        return self._written


class _StoredBlock:
    def __init__(self, length: int, final: bool) -> None:
        self.length = length
        self.header = bytes([1 if final else 0]) + struct.pack("<HH", length, length ^ 0xFFFF)


def _stored_blocks(room: int) -> Iterator[_StoredBlock]:
    """Stored deflate blocks of zeros taking exactly ``room`` bytes (5 per block plus data), the last final.

    The zeros total a multiple of 512 where possible, so the tar stream stays block-aligned. With less
    than 5 bytes of room the target size cannot be met: one empty final block is written.
    """
    minimum = max(1, -(-room // (_STORED_BLOCK_MAX + 5)))
    count = next(
        (k for k in range(minimum, minimum + 512) if (room - 5 * k) % 512 == 0 and room - 5 * k >= 0),
        minimum,
    )
    zeros = max(0, room - 5 * count)
    for index in range(count):
        length = min(_STORED_BLOCK_MAX, zeros)
        zeros -= length
        yield _StoredBlock(length, final=index == count - 1)


def write_archive(out: BinaryIO, folder: Path, total_size: int | None = None) -> int:
    """``cifar-10-python.tar.gz`` of ``folder`` (its 8 files under ``cifar-10-batches-py/``); return its size."""
    gzip_stream = _GzipWriter(out)
    with tarfile.open(fileobj=gzip_stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        tar.addfile(_tar_info(BASE_FOLDER, tarfile.DIRTYPE, 0, 0o755))
        for name in FOLDER_FILES:
            path = folder / name
            info = _tar_info(f"{BASE_FOLDER}/{name}", tarfile.REGTYPE, path.stat().st_size, 0o644)
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return gzip_stream.close(total_size)


def _tar_info(name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, ARCHIVE_MTIME
    return info


# --------------------------------------------------------------------------- the real data set


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
    return [out_dir / BASE_FOLDER / name for name in FOLDER_FILES] + [out_dir / ARCHIVE_NAME]
