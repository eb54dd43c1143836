"""Kinds of work a commit can make due; each loop watches only its own (`Waking.watch`)."""

DELIVERIES = "deliveries"  # the forwarder, and an edge's long-polling agents
EXECUTIONS = "executions"  # the tracker
CALLBACKS = "callbacks"  # the relay
JOURNAL = "journal"  # an agent's reporter
WORK = frozenset({DELIVERIES, EXECUTIONS, CALLBACKS, JOURNAL})
