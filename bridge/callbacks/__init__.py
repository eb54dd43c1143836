"""The fourth stage: relay each finished execution, signed, to its callbacks.

Imports the layers below and earlier stages.
"""
