"""Evaluation: batch generation over the test manifests, REGE, reports, MLflow, registry."""
