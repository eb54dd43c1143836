"""The edge and the outbound-only agent: the same stages, split across a firewall.

Imports every stage; no stage imports it.
"""
