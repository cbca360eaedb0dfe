"""The Kubeflow pipeline (DAG, compile, submit, local run) and the PyTorchJob launcher."""
