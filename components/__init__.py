"""Kubeflow Pipelines v2 lightweight components: thin wrappers that call `trainer` code."""
