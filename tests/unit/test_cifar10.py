from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import pickle
import tarfile
import urllib.error
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torchvision
import torchvision.transforms as transforms

from sandbox import cifar10
from sandbox.errors import ConfigurationError, SandboxError

IMAGES = 503  # 101, 101, 101, 100, 100 rows: batches of unequal size
REPO_ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, cifar10.generate(root, images=IMAGES, seed=3)


def _load_prepare_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare_data", REPO_ROOT / "control" / "prepare-data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_writes_the_nine_files_of_torchvisions_download(small: tuple[Path, list[Path]]) -> None:
    root, paths = small
    folder = root / "cifar-10-batches-py"
    expected = [folder / name for name in cifar10.FOLDER_FILES] + [root / "cifar-10-python.tar.gz"]
    assert paths == expected
    assert all(path.is_file() for path in paths)
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar10.FOLDER_FILES)


def test_batches_parse_with_the_standard_cifar10_reader(small: tuple[Path, list[Path]]) -> None:
    root, _ = small
    rows = []
    for index, name in enumerate([*cifar10.TRAIN_FILES, "test_batch"], 1):
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        assert list(batch) == [b"batch_label", b"labels", b"data", b"filenames"]
        data, labels = batch[b"data"], batch[b"labels"]
        assert data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        assert len(labels) == data.shape[0] == len(batch[b"filenames"])
        assert all(isinstance(label, int) and 0 <= label <= 9 for label in labels)
        assert all(isinstance(n, bytes) and n.endswith(b".png") and b"_s_" in n for n in batch[b"filenames"])
        label = f"training batch {index} of 5" if name != "test_batch" else "testing batch 1 of 1"
        assert batch[b"batch_label"] == label.encode()
        rows.append(data.shape[0])
    assert sum(rows[:5]) == IMAGES and max(rows[:5]) - min(rows[:5]) <= 1
    assert rows[5] == round(IMAGES / 5)


def test_latin1_reading_gives_str_keys_as_torchvision_sees_them(small: tuple[Path, list[Path]]) -> None:
    root, _ = small
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert isinstance(batch["batch_label"], str) and isinstance(batch["filenames"][0], str)
    assert batch["data"].dtype == np.uint8


def test_meta_and_readme_are_the_real_files(small: tuple[Path, list[Path]]) -> None:
    folder = small[0] / "cifar-10-batches-py"
    meta = (folder / "batches.meta").read_bytes()
    assert len(meta) == 158
    assert hashlib.md5(meta).hexdigest() == torchvision.datasets.CIFAR10.meta["md5"]
    assert pickle.loads(meta, encoding="bytes") == {
        b"num_cases_per_batch": 10000,
        b"label_names": [name.encode() for name in cifar10.LABEL_NAMES],
        b"num_vis": 3072,
    }
    assert len((folder / "readme.html").read_bytes()) == 88


def test_archive_holds_the_folder_as_the_real_one(small: tuple[Path, list[Path]]) -> None:
    root, _ = small
    with tarfile.open(root / "cifar-10-python.tar.gz", "r:gz") as tar:
        names = tar.getnames()
        assert names == ["cifar-10-batches-py"] + [f"cifar-10-batches-py/{n}" for n in cifar10.FOLDER_FILES]
        member = tar.extractfile("cifar-10-batches-py/data_batch_2")
        assert member is not None
        assert member.read() == (root / "cifar-10-batches-py" / "data_batch_2").read_bytes()


def test_torchvision_accepts_the_files_apart_from_the_checksum(
    small: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    root = small[0]
    train = torchvision.datasets.CIFAR10(str(root), train=True, download=False, transform=transforms.ToTensor())
    test = torchvision.datasets.CIFAR10(str(root), train=False, download=False)
    assert len(train) == IMAGES and len(test) == round(IMAGES / 5)
    image, label = train[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label <= 9
    assert train.classes == list(cifar10.LABEL_NAMES)  # batches.meta passed torchvision's own MD5 check


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    first = cifar10.generate(tmp_path / "a", images=20, seed=7)
    again = cifar10.generate(tmp_path / "b", images=20, seed=7)
    other = cifar10.generate(tmp_path / "c", images=20, seed=8)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() != other[0].read_bytes()
    assert first[-1].read_bytes() != other[-1].read_bytes()


def test_generate_overwrites_what_is_there(tmp_path: Path) -> None:
    paths = cifar10.generate(tmp_path, images=10)
    original = paths[0].read_bytes()
    paths[0].write_bytes(b"broken")
    assert cifar10.generate(tmp_path, images=10)[0].read_bytes() == original
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("name", [*cifar10.TRAIN_FILES, "test_batch"])
def test_full_size_file_names_make_each_batch_the_real_size(name: str) -> None:
    labels = np.arange(10_000) % 10
    zeros = np.zeros((10_000, 3072), dtype=np.uint8)  # the pixels do not change the size
    label = cifar10.batch_labels()[name]
    bare = cifar10.batch_dict(label, labels.tolist(), zeros, [""] * 10_000)
    chars = cifar10.REAL_SIZES[name] - cifar10.py2_pickle_size(bare)
    names = cifar10.make_filenames(labels, 0, np.random.default_rng(1), chars)
    assert cifar10.py2_pickle_size(cifar10.batch_dict(label, labels.tolist(), zeros, names)) == cifar10.REAL_SIZES[name]


def test_a_full_size_batch_file_is_written_at_the_real_size(tmp_path: Path) -> None:
    labels = np.arange(10_000) % 10
    batch = cifar10.build_batch("data_batch_1", 10_000, labels, 0, 0, cifar10.REAL_SIZES["data_batch_1"])
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as handle:
        cifar10._Py2Pickler(handle).dump(batch)
    assert path.stat().st_size == 31_035_704
    with open(path, "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"data"].shape == (10_000, 3072)


def test_archive_is_padded_to_an_exact_size_and_stays_valid(small: tuple[Path, list[Path]]) -> None:
    folder = small[0] / "cifar-10-batches-py"
    natural = cifar10.write_archive(io.BytesIO(), folder)
    for target in (natural + 40, natural + 100_003, natural + 300_000):
        buffer = io.BytesIO()
        assert cifar10.write_archive(buffer, folder, target) == target == len(buffer.getvalue())
        unpacked = gzip.decompress(buffer.getvalue())  # checks the CRC and the length too
        assert len(unpacked) % 512 == 0
        with tarfile.open(fileobj=io.BytesIO(buffer.getvalue()), mode="r:gz") as tar:
            assert len(tar.getnames()) == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": 5}, "images=5 is out of range: expected 10..50000"),
        ({"images": 60_000}, "images=60000 is out of range"),
        ({"images": True}, "must be a whole number"),
        ({"seed": -1}, "seed=-1 must be a whole number >= 0"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        cifar10.generate(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        cifar10.generate(target, images=10)


def test_fetch_real_without_network_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(cifar10.DatasetDownloadError) as caught:
        cifar10.fetch_real(tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, SandboxError)
    assert cifar10.URL in message and "generate" in message and "\n" not in message


def test_prepare_data_script_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare = _load_prepare_data()
    assert prepare.main(["--out", str(tmp_path / "data"), "--images", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "writing" in out and "==> 9 files" in out
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()


def test_prepare_data_script_reports_a_bad_value_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare = _load_prepare_data()
    assert prepare.main(["--out", str(tmp_path), "--images", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: images=3 is out of range") and err.count("\n") == 1
