"""aml-sandbox: a local, offline stand-in for Azure Machine Learning (SDK v1)."""
