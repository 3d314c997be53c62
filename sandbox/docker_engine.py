"""The one adapter to the Docker engine (docker-py).

The client is created lazily, so importing :mod:`sandbox` never needs a daemon; docker-py errors are
translated at this boundary (``raise ... from exc``). Everything the sandbox starts carries
:data:`MANAGED_LABEL` so leftovers can be found and removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.errors import DockerUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import docker
    from docker.models.images import Image

MANAGED_LABEL = "aml-sandbox.managed"
RECIPE_LABEL = "aml-sandbox.recipe"
RECIPE_HASH_LABEL = "aml-sandbox.recipe-hash"


def _default_client() -> docker.DockerClient:
    import docker

    return docker.from_env(timeout=int(os.environ.get("AML_SANDBOX_DOCKER_TIMEOUT", "300")))


class DockerEngine:
    """A lazily connected Docker client with the few operations the sandbox needs."""

    def __init__(self, client_factory: Callable[[], docker.DockerClient] = _default_client) -> None:
        self._client_factory = client_factory
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            import docker.errors

            try:
                client = self._client_factory()
                client.ping()
            except docker.errors.DockerException as exc:
                raise DockerUnavailableError(str(exc).splitlines()[0]) from exc
            self._client = client
        return self._client

    def available(self) -> bool:
        try:
            _ = self.client
        except DockerUnavailableError:
            return False
        return True

    def get_image(self, reference: str) -> Image | None:
        import docker.errors

        try:
            return self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            return None

    def pull(self, reference: str) -> tuple[bool, str]:
        """Try to pull ``reference``; return (ok, reason). A registry that is out of reach is not an error."""
        import docker.errors

        repository, _, tag = reference.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = reference, "latest"
        try:
            self.client.images.pull(repository, tag=tag)
        except docker.errors.APIError as exc:
            return False, str(exc.explanation or exc).splitlines()[0]
        return True, "pulled"

    def tag(self, image: Image, reference: str) -> None:
        repository, _, tag = reference.rpartition(":")
        image.tag(repository, tag=tag)

    def remove_containers(self, labels: dict[str, str]) -> int:
        """Force-remove every container carrying all ``labels``, with its anonymous volumes; return the count."""
        import docker.errors

        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        removed = 0
        for container in self.client.containers.list(all=True, filters=filters):
            try:
                container.remove(force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
        return removed

    def info(self) -> dict[str, Any]:
        return self.client.info()
