"""`unmix-swav export`: a run's weights as safetensors under torchvision's names, config.json and a model card."""
