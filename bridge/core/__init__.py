"""Values, errors, codecs, retry timing, the claim loop, metrics and logs: what every stage uses.

Imports nothing of the bridge but itself.
"""
