"""FABA-Instruct data layer: labels, typed records, release checks, normalized manifests."""
