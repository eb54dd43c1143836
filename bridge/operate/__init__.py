"""What operators see and do: the admin API, its OpenAPI contract, traffic, the console.

Imports the stages and the store; no stage imports it.
"""
