"""Image data: sources (ImageFolder or staged shards), staging, samplers, crops, generated datasets."""
