"""The content of a generated CIFAR-10: labels, synthetic images, file names and the batch dicts.

The images are synthetic: a class-dependent colour and grating plus noise, so that a network can learn
them. At full size the file names' lengths are chosen so that each batch pickle has the real byte size.
"""

from __future__ import annotations

import numpy as np

from sandbox.cifar10.layout import BATCH_FILES, LABEL_NAMES, PIXELS, ROWS_PER_FULL_BATCH, TEST_FILE, TRAIN_FILES
from sandbox.cifar10.pickler import py2_pickle_size

LABEL_NOISE = 0.25
_CHUNK_ROWS = 1_000


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
        return dict.fromkeys(BATCH_FILES, ROWS_PER_FULL_BATCH)
    base, extra = divmod(images, len(TRAIN_FILES))
    rows = {name: base + (1 if i < extra else 0) for i, name in enumerate(TRAIN_FILES)}
    rows[TEST_FILE] = max(2, round(images / len(TRAIN_FILES)))
    return rows


# --------------------------------------------------------------------------- file names

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


# --------------------------------------------------------------------------- images

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


def balanced_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` labels, each class as often as possible, in random order."""
    return rng.permutation(np.arange(count) % len(LABEL_NAMES)).astype(np.int64)


def build_batch(
    name: str, rows: int, labels: np.ndarray, first_index: int, seed: int, target_size: int | None
) -> dict[str, object]:
    """The dict of one batch file; with ``target_size`` the file names make its pickle exactly that long."""
    rng = np.random.default_rng([seed, BATCH_FILES.index(name)])
    data = _render_rows(labels, rng)
    label = batch_labels()[name]
    label_list = [int(value) for value in labels]
    total_chars = None
    if target_size is not None:
        total_chars = target_size - py2_pickle_size(batch_dict(label, label_list, data, [""] * rows))
    filenames = make_filenames(labels, first_index, rng, total_chars)
    return batch_dict(label, label_list, data, filenames)
