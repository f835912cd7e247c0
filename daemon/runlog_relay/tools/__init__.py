"""Read-side tools for the people who use run logs once they live in a bucket.

``pull`` (bucket → runnable log folder), ``verify`` (folder ↔ bucket), ``runs`` (what is
in the bucket) and ``top`` (live view of sidecars' metrics). Each module exposes
``register(subparsers, summary)`` for :mod:`runlog_relay.cli`, which imports them only
when their command is chosen; shared pieces (exit codes, error messages, progress bars,
JSON output) are in :mod:`runlog_relay.tools._common`.
"""

__all__: list[str] = []
