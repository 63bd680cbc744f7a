"""FABA-Synth: a deterministic, offline FABA-Instruct-style data set of rendered faces."""
