"""The second stage: claim due deliveries and trigger the platform, exactly once.

Imports the layers below and `ingest` (never a later stage).
"""
