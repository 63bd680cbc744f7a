"""FABA-Instruct data layer: typed records, release checks, normalized manifests."""
