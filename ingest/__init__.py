"""Webhook ingest: verify, normalize and store provider events."""
