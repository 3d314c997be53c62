"""Every error the sandbox raises, in one shallow tree. Context is kept as attributes.

::

    SandboxError
    ├── ConfigurationError            a bad setting (names the variable)
    ├── DockerUnavailableError        no Docker engine answers (hint: aml-sandbox bootstrap)
    ├── BootstrapError                installing or starting Docker failed (says what to do)
    ├── ImageError                    an image could not be resolved
    │   ├── ImageBuildError           an offline build failed (image, log_tail)
    │   ├── EnvironmentMappingError   a dependency entry has no pip form (entry, reason); also a ValueError
    │   └── ImageNotFoundError        an image is missing where it cannot be built (the command that builds it)
    ├── StackError                    docker compose failed (command, output)
    ├── StorageUnavailableError       Azurite does not answer (endpoint, hint)
    ├── ServiceUnavailableError       the workspace service does not answer (endpoint, hint)
    └── ServiceError                  the workspace service refused a call (status_code, message)
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of the sandbox's own errors; ``str()`` is a message meant for the user."""


class ConfigurationError(SandboxError, ValueError):
    """A setting has a value the sandbox cannot use."""


class DockerUnavailableError(SandboxError):
    """No Docker engine answers on this machine."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"No Docker engine answers ({detail}). Run 'aml-sandbox bootstrap' to install and start one, "
            "or start Docker Desktop."
        )


class BootstrapError(SandboxError):
    """Docker could not be installed or started."""


class ImageError(SandboxError):
    """An image could not be resolved."""


class EnvironmentMappingError(ImageError, ValueError):
    """An environment's dependency entry cannot be turned into a pip requirement (``entry``, ``reason``)."""

    def __init__(self, entry: str, reason: str, fix: str) -> None:
        self.entry = entry
        self.reason = reason
        super().__init__(f"The environment's dependency {entry!r} {reason}. {fix}")


class ImageBuildError(ImageError):
    """An offline image build failed."""

    def __init__(self, image: str, reason: str, log_tail: str = "") -> None:
        self.image = image
        self.reason = reason
        self.log_tail = log_tail
        message = f"Building image {image} failed: {reason}"
        if log_tail:
            message += f"\n--- last lines of the build log ---\n{log_tail}"
        super().__init__(message)


class ImageNotFoundError(ImageError):
    """An image is missing and cannot be built here."""

    def __init__(self, image: str, hint: str) -> None:
        self.image = image
        self.hint = hint
        super().__init__(f"Image {image} is not present. {hint}")


class StackError(SandboxError):
    """``docker compose`` failed."""

    def __init__(self, command: list[str], output: str) -> None:
        self.command = command
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"'{' '.join(command)}' failed:\n{tail}")


class StorageUnavailableError(SandboxError, ConnectionError):
    """Azurite (the blob datastore) does not answer."""

    def __init__(self, endpoint: str, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(
            f"The local blob storage (Azurite) at {endpoint} does not answer ({detail}). "
            "Start the stack with 'aml-sandbox up'."
        )


class ServiceUnavailableError(SandboxError, ConnectionError):
    """The workspace service does not answer."""

    def __init__(self, endpoint: str, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(
            f"The local workspace service at {endpoint} does not answer ({detail}). "
            "Start the stack with 'aml-sandbox up'."
        )


class ServiceError(SandboxError):
    """The workspace service answered with an error."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(message)
