"""The one trainer image every component and the PyTorchJob run (built from the repo's Dockerfile)."""

TRAINER_IMAGE = "ghcr.io/unmix-swav/trainer:0.1.0"
