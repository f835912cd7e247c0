"""The sidecar: watches a run-log folder and keeps an exact mirror of it in a bucket.

Stages (each in its own module, passing the messages of :mod:`.types`): events →
detect → queue → store, wired by :mod:`.pipeline`; :mod:`.command` is the CLI entry.
"""

from runlog_relay.sidecar.pipeline import DrainReport, Pipeline

__all__ = ["DrainReport", "Pipeline"]
