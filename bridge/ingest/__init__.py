"""The first stage: POST /hooks/{source} verified, identified, routed and stored; status links.

Imports `core`, `web`, `config`, `signing`, `store`.
"""
