"""Distributed LoRA training: Ray Train workers running DeepSpeed, tracked in MLflow."""
