"""webhook-bridge: a durable, verifying webhook receiver in front of a workflow platform."""

__version__ = "0.1.0"
