"""The third stage: follow each started execution to its end.

Imports the layers below and `delivery`'s platform client.
"""
