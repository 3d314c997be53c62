"""Compute targets of the local workspace: an AmlCompute cluster stands for a bounded set of nodes.

A target's ``max_nodes`` bounds how many of its runs execute at once (the rest wait as ``Queued``);
its VM size sets each run container's CPU and memory limits, as the VM would on Azure. Targets come
from ``AML_SANDBOX_COMPUTE_TARGETS`` (``name:max_nodes[:vm_size],...``; default ``cpu-cluster:4``, ``local:1``).
"""

from __future__ import annotations

import json
from collections import OrderedDict

from sandbox.config import ComputeDefinition


class ComputeTarget:
    """A compute target as ``ws.compute_targets[name]`` returns it (AmlCompute, or the local machine)."""

    def __init__(self, workspace: object, definition: ComputeDefinition) -> None:
        self.workspace = workspace
        self.definition = definition
        self.name = definition.name
        self.type = "local" if definition.name == "local" else "AmlCompute"
        self.vm_size = definition.vm_size
        self.max_nodes = definition.max_nodes
        self.min_nodes = 0
        self.provisioning_state = "Succeeded"
        self.location = getattr(workspace, "location", "local")
        self.cluster_location = self.location

    def serialize(self) -> dict:
        return OrderedDict(
            [("name", self.name), ("type", self.type), ("vmSize", self.vm_size),
             ("scaleSettings", {"minNodeCount": self.min_nodes, "maxNodeCount": self.max_nodes}),
             ("provisioningState", self.provisioning_state)]
        )

    def __repr__(self) -> str:
        return (f"{self.type}(workspace={self.workspace!r}, name={self.name}, type={self.type}, "
                f"provisioning_state={self.provisioning_state}, location={self.location}, tags=None)")

    def __str__(self) -> str:
        return json.dumps(self.serialize(), indent=2)
