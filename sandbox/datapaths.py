"""What a dataset path on a datastore means: a file, a folder or a glob, resolved to blobs.

Shared by the facade (``FileDataset.to_path``/``download``/``mount``) and the runner's fake mount,
so both see the same files. Plain data only: no azureml shapes.

Rules (as Azure ML's ``GetDatastoreFiles``): ``'a/b.csv'`` is that blob when it exists; otherwise
``'a/b'`` is the folder ``a/b/`` and every blob under it; ``'a/**/*.jpg'`` is a glob where ``*``
stays within one folder and ``**`` crosses folders. Relative paths are taken from the folder (or
from the part before the first wildcard), with a leading ``/`` as ``FileDataset.to_path()`` returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.storage import BlobInfo, BlobStore

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class DatastorePath:
    """A path on one datastore's blob container."""

    datastore: str
    container: str
    path: str

    @property
    def normalized(self) -> str:
        return normalize(self.path)

    def to_dict(self) -> dict[str, str]:
        return {"datastore": self.datastore, "container": self.container, "path": self.path}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> DatastorePath:
        return cls(data["datastore"], data["container"], data["path"])


@dataclass(frozen=True)
class ResolvedFile:
    """One blob of a dataset and where it lands relative to the dataset's root."""

    blob: BlobInfo
    relative: str  # "/cifar-10-batches-py/data_batch_1"


@dataclass(frozen=True)
class Resolution:
    files: list[ResolvedFile]
    single_file: bool


def normalize(path: str) -> str:
    """Strip leading ``./`` and ``/`` and turn backslashes into slashes."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end == -1:
                out.append(re.escape(c))
            else:
                out.append(pattern[i:end + 1])
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def resolve(store: BlobStore, source: DatastorePath) -> Resolution:
    """List the blobs ``source`` stands for (empty when it matches nothing)."""
    path = source.normalized
    if _GLOB_CHARS.search(path):
        literal = path[: _GLOB_CHARS.search(path).start()]  # type: ignore[union-attr]
        root = literal.rsplit("/", 1)[0] + "/" if "/" in literal else ""
        regex = glob_to_regex(path)
        files = [
            ResolvedFile(blob, "/" + blob.name[len(root):])
            for blob in store.list_blobs(source.container, root)
            if regex.match(blob.name)
        ]
        return Resolution(sorted(files, key=lambda f: f.relative), single_file=False)

    folder = path.rstrip("/")
    if folder and not path.endswith("/"):
        exact = [b for b in store.list_blobs(source.container, folder) if b.name == folder]
        if exact:
            return Resolution([ResolvedFile(exact[0], "/" + folder.rsplit("/", 1)[-1])], single_file=True)
    prefix = f"{folder}/" if folder else ""
    files = [ResolvedFile(blob, "/" + blob.name[len(prefix):]) for blob in store.list_blobs(source.container, prefix)]
    return Resolution(sorted(files, key=lambda f: f.relative), single_file=False)
