"""Code that runs INSIDE the run container: the counterpart of Azure ML's context manager injector.

It is copied into each run as ``/azureml-setup/aml_sandbox_runtime`` and runs in the environment's own
Python, so it imports nothing from the host side (only the standard library, and azureml-core when
the image has it). The host hands it ``/azureml-run/spec.json``; it writes the driver log into
``/azureml-run``. Everything else the run records (metrics, tags, child runs, files, ``outputs/``) its own
azureml-core or MLflow sends to the workspace service over HTTP with the run's token.
"""
