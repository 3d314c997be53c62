from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision.transforms as transforms

from sandbox import cifar10

TRAIN_DIR = Path(__file__).parents[2] / "src" / "train"
LOSS_LINE = re.compile(r"^epoch=(\d+), batch=\s*(\d+): loss (\d+\.\d\d)$", re.MULTILINE)


def _import_from_train(name: str) -> ModuleType:
    """A module of src/train, imported under a private name (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_train_{name}", TRAIN_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cifar10_data = _import_from_train("cifar10_data")
model = _import_from_train("model")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    cifar10.generate(root, images=2000, seed=0)
    return root


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A copy of src/train, as Azure ML ships the folder; ./outputs lands in it."""
    return Path(shutil.copytree(TRAIN_DIR, tmp_path / "train", ignore=shutil.ignore_patterns("__pycache__", "outputs")))


def _train(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_net_maps_a_cifar_image_to_ten_scores() -> None:
    assert tuple(model.Net()(torch.zeros(2, 3, 32, 32)).shape) == (2, 10)


def test_loader_reads_generated_data_with_torchvisions_getitem(data: Path) -> None:
    train = cifar10_data.CIFAR10(root=str(data), train=True, download=False, transform=transforms.ToTensor())
    test = cifar10_data.CIFAR10(root=str(data), train=False, download=False)
    assert len(train) == 2000 and len(test) == 400
    image, label = train[5]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label <= 9
    assert train.classes == list(cifar10.LABEL_NAMES)


def test_a_short_training_run_learns_logs_and_saves_the_model(data: Path, workdir: Path) -> None:
    result = _train(workdir, "--data_path", str(data), "--epochs", "2", "--log_interval", "50", "--num_workers", "0",
                    "--learning_rate", "0.003", "--momentum", "0.92")
    assert result.returncode == 0, result.stderr
    assert "===== DATA =====" in result.stdout and f"DATA PATH: {data}" in result.stdout
    assert "Attempted to log scalar metric loss:" in result.stdout  # azureml-core's offline run context
    losses = [(int(epoch), int(batch), float(loss)) for epoch, batch, loss in LOSS_LINE.findall(result.stdout)]
    assert len(losses) == 20  # 2 epochs x 2000 images / batches of 4 / every 50 batches
    assert losses[0][:2] == (1, 50) and losses[-1][:2] == (2, 500)
    first = losses[0][2]
    last = sum(loss for *_, loss in losses[-3:]) / 3  # a 50-batch window is noisy: the mean of the last three
    assert last < 0.8 * first, f"the loss did not fall: {[loss for *_, loss in losses]}"
    assert result.stdout.rstrip().endswith("Finished Training")
    state = torch.load(workdir / "outputs" / "model.pt")
    model.Net().load_state_dict(state)


def _corrupt(root: Path) -> str:
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    return f"CIFAR-10 file '{path}' is corrupt"


def _foreign_pickle(root: Path) -> str:
    path = root / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(pickle.dumps({"data": os.system}, protocol=2))
    return "refers to 'posix.system', which a CIFAR-10 file never does"


def _missing_batch(root: Path) -> str:
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    return "is incomplete: missing ['data_batch_3']"


def _no_folder(root: Path) -> str:
    shutil.rmtree(root / "cifar-10-batches-py")
    (root / "foo.txt").write_text("")
    return (
        f"CIFAR-10 data not found under '{root}': expected folder 'cifar-10-batches-py' with data_batch_1..5, "
        "test_batch, batches.meta; found: ['cifar-10-python.tar.gz', 'foo.txt']"
    )


def _missing_directory(root: Path) -> str:
    shutil.rmtree(root)
    return f"CIFAR-10 data not found: '{root}' does not exist"


DAMAGES: dict[str, Callable[[Path], str]] = {
    damage.__name__.lstrip("_"): damage
    for damage in (_missing_directory, _no_folder, _missing_batch, _corrupt, _foreign_pickle)
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path, subprocess.CompletedProcess[str]]]:
    """train.py on each kind of damaged data folder, the runs started together (each imports torch)."""
    started = {}
    for name, damage in DAMAGES.items():
        base = tmp_path_factory.mktemp(name)
        cifar10.generate(base / "data", images=10)
        expected = damage(base / "data")
        work = Path(shutil.copytree(TRAIN_DIR, base / "train", ignore=shutil.ignore_patterns("__pycache__", "outputs")))
        process = subprocess.Popen(
            [sys.executable, "train.py", "--data_path", str(base / "data"), "--num_workers", "0"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        started[name] = (expected, work, process)
    runs = {}
    for name, (expected, work, process) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        runs[name] = (expected, work, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return runs


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_data_gives_one_clear_line_and_exit_code_1(
    bad_runs: dict[str, tuple[str, Path, subprocess.CompletedProcess[str]]], damage: str
) -> None:
    expected, work, result = bad_runs[damage]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert expected in result.stderr
    assert "LIST FILES IN DATA PATH..." in result.stdout
    assert not (work / "outputs").exists()


@pytest.mark.parametrize(
    ("damage", "error_type"),
    [(_missing_directory, FileNotFoundError), (_missing_batch, FileNotFoundError), (_corrupt, ValueError)],
)
def test_loader_errors_are_standard_exception_types(
    tmp_path: Path, damage: Callable[[Path], str], error_type: type[Exception]
) -> None:
    root = tmp_path / "data"
    cifar10.generate(root, images=10)
    expected = damage(root)
    with pytest.raises(error_type, match=re.escape(expected)) as caught:
        cifar10_data.CIFAR10(root=str(root), train=True, download=False)
    assert isinstance(caught.value, cifar10_data.CIFAR10DataError)
