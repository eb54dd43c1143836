"""The web console: server-rendered pages, a chart, a stylesheet and one script.

Imports `operate` and the layers below.
"""
