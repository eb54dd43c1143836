"""HTTP plumbing shared by the stages: the outbound client, the SSRF guard, server bounds, throttling.

Imports only `core`.
"""
