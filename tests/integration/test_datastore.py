"""The default datastore on real Azurite: upload, download, path, as PARITY.md section 3 says (issue 4)."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from sandbox import cifar10
from sandbox.aml import DataReference, Workspace
from sandbox.aml.exceptions import UserErrorException
from sandbox.config import Settings
from sandbox.errors import StorageUnavailableError

CIFAR_FILES = {"cifar-10-batches-py/" + name for name in
               ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                "batches.meta", "readme.html")} | {"cifar-10-python.tar.gz"}


def _blobs(settings: Settings, container: str, prefix: str = "") -> dict[str, str]:
    box = BlobServiceClient.from_connection_string(settings.connection_string).get_container_client(container)
    if not box.exists():
        return {}
    return {b.name: b.etag for b in box.list_blobs(name_starts_with=prefix or None)}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    cifar10.generate(tmp_path / "data", images=20, seed=1)
    return tmp_path / "data"


@pytest.mark.parity
def test_upload_of_the_cifar_folder_prints_azure_lines_and_names_blobs_under_the_target(
        local_workspace: Settings, data_dir: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandbox.aml.datastore._warned", set())  # Azure warns once per process
    datastore = Workspace.from_config().get_default_datastore()
    assert datastore.name == "workspaceblobstore"
    assert datastore.container_name == f"azureml-blobstore-{local_workspace.workspace_id}"

    with caplog.at_level(logging.WARNING):
        reference = datastore.upload(src_dir="./data", target_path="datasets/cifar10", overwrite=True)
    lines = capsys.readouterr().out.splitlines()

    assert lines[0] == "Uploading an estimated of 9 files"
    assert lines[-1] == "Uploaded 9 files"
    pairs = lines[1:-1]
    assert len(pairs) == 18
    for index in range(9):
        uploading, uploaded = pairs[2 * index], pairs[2 * index + 1]
        source = uploading.removeprefix("Uploading ")
        assert source.startswith("./data/")
        assert uploaded == f"Uploaded {source}, {index + 1} files out of an estimated total of 9"
    assert {p.removeprefix("Uploading ./data/") for p in pairs[::2]} == CIFAR_FILES

    blobs = _blobs(local_workspace, datastore.container_name)
    assert set(blobs) == {f"datasets/cifar10/{name}" for name in CIFAR_FILES}
    assert isinstance(reference, DataReference)
    assert reference.path_on_datastore == "datasets/cifar10"
    assert re.fullmatch(r"\$AZUREML_DATAREFERENCE_[0-9a-f]{32}", str(reference))
    assert any('"Datastore.upload" is deprecated after version 1.0.69.' in r.getMessage() for r in caplog.records)


@pytest.mark.parity
def test_second_upload_without_overwrite_skips_every_file_and_changes_no_blob(
        local_workspace: Settings, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datastore = Workspace.from_config().get_default_datastore()
    datastore.upload(src_dir="./data", target_path="datasets/cifar10", overwrite=False)
    before = _blobs(local_workspace, datastore.container_name)
    capsys.readouterr()

    datastore.upload(src_dir="./data", target_path="datasets/cifar10", overwrite=False)
    lines = capsys.readouterr().out.splitlines()

    assert lines[0] == "Uploading an estimated of 9 files"
    skipped = [line for line in lines if line.startswith("Target already exists. Skipping upload for ")]
    assert {s.removeprefix("Target already exists. Skipping upload for ") for s in skipped} == {
        f"datasets/cifar10/{name}" for name in CIFAR_FILES}
    assert lines[-1] == "Uploaded 0 files"
    assert _blobs(local_workspace, datastore.container_name) == before


@pytest.mark.parity
def test_overwrite_true_replaces_content(local_workspace: Settings, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "a.txt").write_text("first")
    datastore = Workspace.from_config().get_default_datastore()
    datastore.upload(src_dir=str(folder), target_path="t", overwrite=True)
    (folder / "a.txt").write_text("second")
    datastore.upload(src_dir=str(folder), target_path="t", overwrite=False)
    box = ContainerClient.from_connection_string(local_workspace.connection_string, datastore.container_name)
    assert box.download_blob("t/a.txt").readall() == b"first"
    datastore.upload(src_dir=str(folder), target_path="t", overwrite=True)
    assert box.download_blob("t/a.txt").readall() == b"second"
    assert capsys.readouterr().out.splitlines()[-1] == "Uploaded 1 files"


@pytest.mark.parity
@pytest.mark.parametrize(("target", "prefix"), [("../../x", "x/"), ("./a/b", "a/b/"), ("/abs", "abs/"),
                                                (".\\win", "win/"), (None, "")])
def test_target_path_is_sanitised_as_azure_does(local_workspace: Settings, tmp_path: Path, target: str | None,
                                                prefix: str) -> None:
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.txt").write_text("x")
    datastore = Workspace.from_config().get_default_datastore()
    reference = datastore.upload(src_dir=str(folder), target_path=target, show_progress=False)
    assert set(_blobs(local_workspace, datastore.container_name)) == {f"{prefix}sub/f.txt"}
    assert reference.path_on_datastore == (target or "")
    if target is None:
        assert str(reference) == "$AZUREML_DATAREFERENCE_workspaceblobstore"


@pytest.mark.parity
def test_src_dir_that_is_not_a_directory_fails_with_azures_error_and_uploads_nothing(
        local_workspace: Settings, tmp_path: Path) -> None:
    datastore = Workspace.from_config().get_default_datastore()
    (tmp_path / "file.txt").write_text("x")
    for bad in (str(tmp_path / "missing"), str(tmp_path / "file.txt")):
        with pytest.raises(UserErrorException, match=r"src_path must be a directory\."):
            datastore.upload(src_dir=bad, target_path="x")
    assert _blobs(local_workspace, datastore.container_name) == {}


@pytest.mark.local_only
def test_five_thousand_small_files_upload_correctly_and_concurrently(
        local_workspace: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "many"
    for index in range(5000):
        sub = folder / f"d{index % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{index:04d}.bin").write_bytes(index.to_bytes(4, "big") * 768)  # 3 KB each

    in_flight = 0
    peak = 0
    lock = threading.Lock()
    original = ContainerClient.upload_blob

    def counting(self: ContainerClient, *args: object, **kwargs: object) -> object:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(ContainerClient, "upload_blob", counting)
    datastore = Workspace.from_config().get_default_datastore()
    start = time.monotonic()
    datastore.upload(src_dir=str(folder), target_path="many", show_progress=False)
    elapsed = time.monotonic() - start
    blobs = _blobs(local_workspace, datastore.container_name, "many/")
    assert len(blobs) == 5000
    box = ContainerClient.from_connection_string(local_workspace.connection_string, datastore.container_name)
    assert box.download_blob("many/d07/f1257.bin").readall() == (1257).to_bytes(4, "big") * 768
    assert peak >= 8, f"uploads did not overlap (at most {peak} at once)"
    print(f"5000 x 3 KB files: {elapsed:.1f} s, {5000 / elapsed:.0f} files/s, peak {peak} in flight")


@pytest.mark.parity
def test_download_and_path(local_workspace: Settings, data_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    datastore = Workspace.from_config().get_default_datastore()
    datastore.upload(src_dir="./data", target_path="datasets/cifar10", show_progress=False)
    count = datastore.download(str(tmp_path / "down"), prefix="datasets/cifar10/cifar-10-batches-py")
    assert count == 8
    original = (data_dir / "cifar-10-batches-py" / "data_batch_3").read_bytes()
    assert (tmp_path / "down" / "datasets/cifar10/cifar-10-batches-py/data_batch_3").read_bytes() == original
    assert "files out of an estimated total of 8" in capsys.readouterr().out
    assert datastore.download(str(tmp_path / "down"), prefix="datasets/cifar10/cifar-10-batches-py") == 0
    reference = datastore.path("datasets/cifar10")
    assert reference.path_on_datastore == "datasets/cifar10"
    assert reference.mode == "mount"
    assert datastore.path("datasets/cifar10", data_reference_name="cifar").as_download().mode == "download"


@pytest.mark.local_only
def test_azurite_not_running_fails_clearly_within_30_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    monkeypatch.setenv("AML_SANDBOX_HOME", str(tmp_path))
    monkeypatch.setenv("AML_SANDBOX_BLOB_ENDPOINT", endpoint)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    datastore = Workspace.from_config().get_default_datastore()
    start = time.monotonic()
    with pytest.raises(StorageUnavailableError) as error:
        datastore.upload(src_dir=str(tmp_path / "src"), target_path="x", show_progress=False)
    assert time.monotonic() - start < 30
    assert endpoint in str(error.value) and "aml-sandbox up" in str(error.value)


@pytest.mark.parity
def test_file_dataset_to_path_download_and_mount(local_workspace: Settings, data_dir: Path, tmp_path: Path) -> None:
    from sandbox import aml

    datastore = Workspace.from_config().get_default_datastore()
    datastore.upload(src_dir="./data", target_path="datasets/cifar10", show_progress=False)
    dataset = aml.Dataset.File.from_files(path=(datastore, "datasets/cifar10"))
    assert sorted(dataset.to_path()) == sorted(f"/{name}" for name in CIFAR_FILES)

    downloaded = dataset.download(str(tmp_path / "dl"))
    assert len(downloaded) == 9
    original = (data_dir / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "test_batch").read_bytes() == original
    with pytest.raises(UserErrorException, match=r"already exists\. Set overwrite=True"):
        dataset.download(str(tmp_path / "dl"))
    assert len(dataset.download(str(tmp_path / "dl"), overwrite=True)) == 9

    single = aml.Dataset.File.from_files(path=(datastore, "datasets/cifar10/cifar-10-batches-py/batches.meta"))
    assert single.to_path() == ["/batches.meta"]

    with dataset.mount() as context:
        mount_point = Path(context.mount_point)
        assert sorted(p.name for p in mount_point.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
        assert (mount_point / "cifar-10-batches-py" / "test_batch").read_bytes() == original
    assert not mount_point.exists(), "the mount point is removed when the context ends"

    missing = aml.Dataset.File.from_files(path=(datastore, "datasets/none"))
    with pytest.raises(UserErrorException, match="holds no files"):
        missing.download(str(tmp_path / "none"))
