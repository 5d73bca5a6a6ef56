"""JSON Schemas (draft 2020-12) for journeys, journey tests and config.yaml, shipped as data."""
