"""Snapshot rules and limits, with Azure ML's messages (PARITY.md 6)."""

from __future__ import annotations

import os
import tarfile
import warnings
from pathlib import Path

import pytest

from sandbox import aml, snapshot
from sandbox.aml.exceptions import SnapshotException


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def _names(taken: snapshot.Snapshot) -> set[str]:
    with tarfile.open(taken.archive) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_amlignore_wins_over_gitignore(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train.py": b"x", "data/big.bin": b"1", "notes.md": b"n", "keep/a.txt": b"a",
                                   ".amlignore": b"data/\n*.md\n", ".gitignore": b"keep/\n"})
    taken = snapshot.take(src, tmp_path / "cache")
    assert _names(taken) == {"train.py", "keep/a.txt", ".amlignore", ".gitignore"}
    taken.archive.unlink()


def test_gitignore_is_used_without_amlignore_and_nothing_is_excluded_without_either(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train.py": b"x", "outputs/old.pt": b"1", ".gitignore": b"outputs/\n"})
    assert _names(snapshot.take(src, tmp_path / "c1")) == {"train.py", ".gitignore"}
    (src / ".gitignore").unlink()
    assert _names(snapshot.take(src, tmp_path / "c2")) == {"train.py", "outputs/old.pt"}


def test_size_limit_raises_azures_framed_message(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train.py": b"x"})
    with open(src / "huge.bin", "wb") as handle:  # sparse: 301 MB on paper, nothing on disk
        handle.truncate(301 * 1024 * 1024)
    with pytest.raises(snapshot.SnapshotLimitError) as error:
        snapshot.take(src, tmp_path / "cache")
    assert str(error.value) == (
        "====================================================================\n\n"
        f"While attempting to take snapshot of {src}\n"
        "Your total snapshot size exceeds the limit of 300.0 MB.\n"
        "Please see http://aka.ms/aml-largefiles on how to work with large files.\n\n"
        "====================================================================\n\n")


def test_file_count_limit_counts_changes_since_the_last_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    src = _tree(tmp_path / "src", {f"f{i:04d}.txt": b"x" for i in range(2001)})
    monkeypatch.setenv("AML_SNAPSHOT_NO_FILE_LIMIT", "1")
    snapshot.take(src, tmp_path / "cache").archive.unlink()  # the first snapshot, limit lifted
    monkeypatch.delenv("AML_SNAPSHOT_NO_FILE_LIMIT")
    snapshot.take(src, tmp_path / "cache").archive.unlink()  # nothing changed: 0 files count
    with pytest.raises(snapshot.SnapshotLimitError, match=r"Your project exceeds the file limit of 2000\."):
        snapshot.take(src, tmp_path / "other-cache")  # no previous snapshot: all 2001 count


def test_large_folder_warns_as_azure_does(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train.py": b"x"})
    with open(src / "weights.bin", "wb") as handle:
        handle.truncate(26 * 1024 * 1024)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        snapshot.take(src, tmp_path / "cache").archive.unlink()
    assert any("The size of the directory >= 25 MB, so it can take a few minutes." in str(w.message) for w in caught)


def test_unreadable_files_are_skipped_with_azures_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        src = _tree(tmp_path / "src", {"train.py": b"x"})
        os.symlink(tmp_path / "missing", src / "dangling")
        bad = src / "dangling"
    else:  # pragma: no cover - as a normal user an unreadable file is enough
        src = _tree(tmp_path / "src", {"train.py": b"x", "secret": b"s"})
        (src / "secret").chmod(0)
        bad = src / "secret"
    assert _names(snapshot.take(src, tmp_path / "cache")) == {"train.py"}
    assert f"Cannot access file, so excluded from snapshot: {bad}" in capsys.readouterr().out


def test_extract_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "x").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "x", arcname="../escape.txt")
    with pytest.raises(ValueError, match="outside the working directory"):
        snapshot.extract(evil, tmp_path / "wd")
    assert not (tmp_path / "escape.txt").exists()


def test_submit_turns_the_limit_into_azures_snapshot_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setenv("AML_SANDBOX_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    src = _tree(tmp_path / "src", {"train.py": b"print(1)\n"})
    with open(src / "huge.bin", "wb") as handle:
        handle.truncate(301 * 1024 * 1024)
    ws = aml.Workspace.from_config()
    config = aml.ScriptRunConfig(source_directory=str(src), script="train.py", compute_target="cpu-cluster")
    config.run_config.environment = ws.environments["AzureML-PyTorch-1.6-CPU"]
    monkeypatch.setattr("sandbox.aml.experiment._Submission._image", lambda self, env: ("img", "python", None))
    with pytest.raises(SnapshotException, match=r"Your total snapshot size exceeds the limit of 300\.0 MB"):
        aml.Experiment(ws, "exp").submit(config)


def _archive(path: Path, members: list[tuple[str, int]]) -> Path:
    """A .tar.gz of zero-filled files of the given sizes (tiny compressed, large unpacked)."""
    import io

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)) if size < 4 * 1024 * 1024 else _Zeros(size))
    return path


class _Zeros:
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_extract_stops_at_the_300_mb_of_files_before_writing_past_it(tmp_path: Path) -> None:
    bomb = _archive(tmp_path / "bomb.tar.gz", [("a.bin", 1024 * 1024), ("b.bin", 300 * 1024 * 1024)])
    assert bomb.stat().st_size < 3 * 1024 * 1024  # a gzip bomb: under 3 MB uploaded
    with pytest.raises(snapshot.SnapshotLimitError, match=r"Your total snapshot size exceeds the limit of 300\.0 MB"):
        snapshot.extract(bomb, tmp_path / "wd")
    written = sum(p.stat().st_size for p in (tmp_path / "wd").rglob("*") if p.is_file())
    assert written <= 1024 * 1024  # b.bin was refused from its header, before a byte of it was written
    with pytest.raises(snapshot.SnapshotLimitError, match=r"exceeds the limit of 300\.0 MB"):
        snapshot.check_archive(bomb)


def test_extract_counts_members_and_stops_at_the_limit(tmp_path: Path) -> None:
    many = _archive(tmp_path / "many.tar.gz", [(f"f{i}", 0) for i in range(60)])
    with pytest.raises(snapshot.SnapshotLimitError, match="more than 50 members"):
        snapshot.extract(many, tmp_path / "wd", max_members=50)
    assert len(list((tmp_path / "wd").iterdir())) <= 50
    assert snapshot.check_archive(many) == 0


def test_a_snapshot_within_the_limits_unpacks_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_SNAPSHOT_NO_FILE_LIMIT", "1")
    files = {f"pkg/m{i}.py": (b"" if i % 3 == 0 else os.urandom(512 * (i % 4) + i)) for i in range(300)}
    src = _tree(tmp_path / "src", {**files, "train.py": b"print('hi')\n"})
    taken = snapshot.take(src, tmp_path / "cache")
    assert snapshot.check_archive(taken.archive) == taken.size
    names = snapshot.extract(taken.archive, tmp_path / "wd")
    assert sorted(names) == sorted(taken.files)
    assert all((tmp_path / "wd" / n).read_bytes() == (src / n).read_bytes() for n in names)


def test_a_huge_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    evil = tmp_path / "pax.tar.gz"
    with tarfile.open(evil, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "c" * (5 * 1024 * 1024)}
        tar.addfile(info, None)
    with pytest.raises(snapshot.SnapshotLimitError, match="larger than 4194304 bytes"):
        snapshot.check_archive(evil)


def test_orphan_snapshots_older_than_an_hour_are_removed_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    (folder / "manifests").mkdir(parents=True)
    old_id, kept_id, new_id = (f"0f8fad5b-d9cb-469f-a165-7086772895{i:02d}" for i in range(3))
    names = [f"{old_id}.tar.gz", f"{old_id}.build.log", f"{old_id}.tar.part", f"{kept_id}.tar.gz",
             f"{new_id}.tar.gz", "notes.txt", "manifests/abc.json"]
    for name in names:
        (folder / name).write_text("x")
        os.utime(folder / name, (1000.0, 1000.0))
    os.utime(folder / f"{new_id}.tar.gz", (10_000.0, 10_000.0))
    os.symlink(tmp_path / "victim", folder / f"{'1' * 8}-d9cb-469f-a165-708677289500.tar.gz")
    (tmp_path / "victim").write_text("keep me")
    removed = snapshot.remove_orphans(folder, keep={kept_id}, now=1000.0 + 3601)
    assert removed == sorted([f"{old_id}.tar.gz", f"{old_id}.build.log", f"{old_id}.tar.part"])
    left = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    assert left == {f"{kept_id}.tar.gz", f"{new_id}.tar.gz", "notes.txt", "manifests", "manifests/abc.json",
                    f"{'1' * 8}-d9cb-469f-a165-708677289500.tar.gz"}
    assert (tmp_path / "victim").read_text() == "keep me"
    assert snapshot.remove_orphans(tmp_path / "missing", keep=set()) == []
