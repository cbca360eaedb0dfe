"""Evaluations of a pretrained trunk: linear probe, semi-supervised fine-tuning and a weighted kNN monitor."""
