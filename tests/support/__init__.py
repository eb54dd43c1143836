"""Helpers the tests share: a test imports from here, never from another test module."""
