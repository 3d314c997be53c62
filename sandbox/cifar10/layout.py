"""CIFAR-10's on-disk layout as torchvision downloads it: file names, classes and the real byte sizes."""

from __future__ import annotations

BASE_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_FILES = (*TRAIN_FILES, TEST_FILE)
META_FILE = "batches.meta"
README_FILE = "readme.html"
FOLDER_FILES = (*BATCH_FILES, META_FILE, README_FILE)
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
