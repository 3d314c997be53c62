"""Figures Azure publishes, shown beside the measurements as labelled references: never measured here.

Each entry says what the figure covers and where it is published, so a reader can judge how far it is
from what this benchmark measures. No ratio is taken against them and no goal is checked on them.
"""

from __future__ import annotations

from dataclasses import dataclass

HELLO_WORLD = ("Microsoft Learn, \"Tutorial: Get started with a Python script (v1)\" "
               "(MicrosoftDocs/azure-docs, articles/machine-learning/v1/tutorial-1st-experiment-hello-world.md), "
               "section \"Monitor your code in the cloud in the studio\"")


@dataclass(frozen=True)
class Published:
    what: str
    value: str
    covers: str
    source: str
    #: The measured row here closest in scope, and how it differs.
    nearest: str


FIGURES = (
    Published(
        "Azure ML: the very first job", "5-10 min",
        "a job running `hello.py` (prints one line; no data set, no upload) on a compute cluster at 0 nodes: the "
        "Docker image built in the cloud, the cluster resized from 0 to 1 node, the image downloaded to the node",
        HELLO_WORLD,
        "none: 6c times the environment's image build alone, 8a the data tutorial with a warm image"),
    Published(
        "Azure ML: later jobs", "about 15 s",
        "the same `hello.py` job again, the image cached on the node (submit to Completed, no upload, no data set, "
        "a script that prints one line)",
        HELLO_WORLD,
        "none exactly: 8b is the data tutorial's overhead and includes the upload of CIFAR-10 and a dataset mount"),
)
