"""runlog-relay: mirror runnable run logs from a shared volume to S3/MinIO.

The package has three entry points, all behind :mod:`runlog_relay.cli`: the sidecar
(:mod:`runlog_relay.sidecar`), the operator (:mod:`runlog_relay.operator`) and the
read-side tools (:mod:`runlog_relay.tools`).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
