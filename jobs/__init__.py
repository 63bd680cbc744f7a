"""Thin entry points of the pipeline stages and Ray jobs (``python -m jobs.<name>``)."""
