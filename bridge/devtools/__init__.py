"""Developer tools shipped with the bridge: the platform emulator and provider signers.

Imports `core` and `signing` only.
"""
