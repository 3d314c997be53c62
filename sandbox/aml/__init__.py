"""The local Azure ML facade: the names a control script uses, with azureml-core's call signatures.

One module per Azure ML concept. ``ScriptRunConfig`` is azureml-core's own class (a pure local
object); ``Environment`` is azureml-core's class with the workspace lookups served locally.
"""

from azureml.core import ScriptRunConfig

from sandbox.aml.compute import ComputeTarget
from sandbox.aml.data_reference import DataPath, DataReference
from sandbox.aml.dataset import Dataset, FileDataset
from sandbox.aml.dataset_consumption_config import DatasetConsumptionConfig
from sandbox.aml.datastore import AzureBlobDatastore, Datastore
from sandbox.aml.environment import Environment
from sandbox.aml.experiment import Experiment
from sandbox.aml.run import Run
from sandbox.aml.workspace import Workspace

__all__ = [
    "AzureBlobDatastore",
    "ComputeTarget",
    "DataPath",
    "DataReference",
    "Dataset",
    "DatasetConsumptionConfig",
    "Datastore",
    "Environment",
    "Experiment",
    "FileDataset",
    "Run",
    "ScriptRunConfig",
    "Workspace",
]
