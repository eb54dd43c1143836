"""The command line: serve, agent, check-config, the admin client, trigger/tail, demo.

The top of the tree: imports anything, imported by nothing but `bridge.__main__`.
"""
