"""unmix-swav: SwAV + Un-Mix self-supervised pretraining and its evaluations."""

__version__ = "0.1.0"
