"""Metrics: FABA-Bench's REGE and its parsers."""
