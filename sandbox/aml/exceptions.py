"""Azure ML's own exception types, raised by the local facade too.

Client code that handles cloud errors (``except UserErrorException``) keeps working against the
sandbox, and ``str()`` has Azure's framing. These are azureml-core's classes, not copies.
"""

from azureml.exceptions import (
    ActivityFailedException,
    ComputeTargetException,
    ExperimentExecutionException,
    RunEnvironmentException,
    SnapshotException,
    UserErrorException,
    WorkspaceException,
)

__all__ = [
    "ActivityFailedException",
    "ComputeTargetException",
    "ExperimentExecutionException",
    "RunEnvironmentException",
    "SnapshotException",
    "UserErrorException",
    "WorkspaceException",
]
