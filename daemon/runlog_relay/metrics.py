"""Every Prometheus metric runlog-relay exports, on an injected registry.

Callers build one ``SidecarMetrics`` or ``OperatorMetrics`` per process with the
registry they serve (tests pass a fresh ``CollectorRegistry``). Labels are few and
bounded: never a path, key or run id (those go to logs).

``SidecarMetrics(None)`` records nothing: ``sidecar --once`` serves no ``/metrics``, and
prometheus_client's import (its exposition module pulls in http.server and email, ~25 ms
of CPU) was a tenth of a one-shot sync's start-up, which rclone does not pay (issue 12,
item 6). The metrics are the same definitions either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LAG_BUCKETS", "OperatorMetrics", "RunMetrics", "SidecarMetrics"]

#: Change seen → object written, seconds. Dense below a second, where a healthy relay
#: lives, with an edge at each published target (15 ms, 150 ms, 2 s).
LAG_BUCKETS = (
    0.005,
    0.015,
    0.025,
    0.05,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

UPLOAD_RESULTS = ("success", "retry", "failure")


class _Unrecorded:
    """A metric of a process that serves none: every update is a no-op."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *args: Any, **kwargs: Any) -> _Unrecorded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def _metric_types(
    registry: CollectorRegistry | None,
) -> tuple[type[Counter], type[Gauge], type[Histogram]]:
    """The metric classes that record into ``registry``; with None, ones that do not."""
    if registry is None:
        unrecorded = cast(Any, _Unrecorded)
        return unrecorded, unrecorded, unrecorded
    import prometheus_client  # here: a process that serves no metrics never imports it

    return prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram


class SidecarMetrics:
    """Write and sync activity of one sidecar (with None, recorded nowhere)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        Counter, Gauge, Histogram = _metric_types(registry)  # the classes, by their names
        self.fs_events = Counter(
            "runlog_relay_fs_events_total",
            "Filesystem change events received for the watched folder (inotify or polling).",
            registry=registry,
        )
        self.fs_write_bytes = Counter(
            "runlog_relay_fs_write_bytes_total",
            "Bytes of new, complete file versions seen in the folder (write activity).",
            registry=registry,
        )
        self.fs_versions = Counter(
            "runlog_relay_fs_versions_total",
            "New, complete file versions seen in the folder.",
            registry=registry,
        )
        self.uploads = Counter(
            "runlog_relay_uploads_total",
            "Upload attempts by result: success, retry (transient error, will retry),"
            " failure (permanent error such as AccessDenied; retried slowly).",
            ["result"],
            registry=registry,
        )
        for result in UPLOAD_RESULTS:
            self.uploads.labels(result=result)
        self.upload_bytes = Counter(
            "runlog_relay_upload_bytes_total",
            "Bytes of object bodies uploaded successfully.",
            registry=registry,
        )
        self.sync_lag = Histogram(
            "runlog_relay_sync_lag_seconds",
            "Time from a file change being seen to its content being in the bucket.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.pending_files = Gauge(
            "runlog_relay_pending_files",
            "Files whose latest content is not in the bucket yet (queued, uploading or"
            " waiting to retry).",
            registry=registry,
        )
        self.torn_reads = Counter(
            "runlog_relay_torn_reads_total",
            "Reads that found a file half-written (not JSON) or changing while read.",
            registry=registry,
        )
        self.torn_files = Gauge(
            "runlog_relay_torn_files",
            "Files that have stayed torn (not valid JSON) longer than the grace period.",
            registry=registry,
        )
        self.bucket_mismatches = Counter(
            "runlog_relay_bucket_mismatches_total",
            "Objects found holding another version than the last one uploaded (an upload"
            " that timed out landed late), and uploaded again.",
            registry=registry,
        )
        self.retries = Counter(
            "runlog_relay_retries_total",
            "Uploads scheduled again after a failure.",
            registry=registry,
        )
        self.skipped_files = Counter(
            "runlog_relay_skipped_files_total",
            "Files not mirrored, by reason: symlink, not_regular, unsafe_name, key_too_long"
            " (over 1024 bytes with the prefix), unreadable, too_large, error (an unexpected"
            " failure while handling the file).",
            ["reason"],
            registry=registry,
        )
        self.last_sync = Gauge(
            "runlog_relay_last_sync_timestamp_seconds",
            "Unix time of the last successful upload or reconcile that found nothing to do.",
            registry=registry,
        )
        self.runs_tracked = Gauge(
            "runlog_relay_runs_tracked",
            "Runs (run ids) seen in the watched folder.",
            registry=registry,
        )
        self.files_tracked = Gauge(
            "runlog_relay_files_tracked",
            "Run-log files seen in the watched folder.",
            registry=registry,
        )
        self.unwatched_folders = Gauge(
            "runlog_relay_unwatched_folders",
            "Folders polled instead of watched because an inotify limit was reached"
            " (fs.inotify.max_user_watches or max_user_instances).",
            registry=registry,
        )
        self.watch_overflows = Counter(
            "runlog_relay_watch_overflows_total",
            "inotify event queue overflows (events were lost; each one triggers a rescan).",
            registry=registry,
        )
        self.store_ready = Gauge(
            "runlog_relay_sidecar_store_ready",
            "1 when the bucket is reachable and writable with the configured credentials.",
            registry=registry,
        )
        self.config_reloads = Counter(
            "runlog_relay_config_reloads_total",
            "Configuration reloads by result: applied or rejected.",
            ["result"],
            registry=registry,
        )
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result=result)
        self.runs = RunMetrics(registry)


#: runnable's terminal statuses: the only values of the ``status`` label.
SEAL_STATUSES = ("SUCCESS", "FAIL")
TAGGING_RESULTS = ("success", "failure", "unsupported")
RETENTION_FAILURES = ("bucket_differs", "changed", "not_removable", "error")


class RunMetrics:
    """Sealed runs and local retention (``SidecarMetrics.runs``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        Counter, Gauge, Histogram = _metric_types(registry)  # the classes, by their names
        self.sealed = Counter(
            "runlog_relay_runs_sealed_total",
            "Runs sealed: final RunLog status and every file verified in the bucket by a"
            " listing of the run's prefix, by the run's status.",
            ["status"],
            registry=registry,
        )
        for status in SEAL_STATUSES:
            self.sealed.labels(status=status)
        self.seal_lag = Histogram(
            "runlog_relay_run_seal_lag_seconds",
            "Time from a run's final status being seen to the run being sealed.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.unsealed = Counter(
            "runlog_relay_runs_unsealed_total",
            "Sealed runs written again (retried or resumed): unsealed until sealed again.",
            registry=registry,
        )
        self.sealed_now = Gauge(
            "runlog_relay_sealed_runs",
            "Runs in the watched folder that are sealed right now.",
            registry=registry,
        )
        self.tagging = Counter(
            "runlog_relay_object_tagging_total",
            "Objects of sealed runs tagged runlog-relay/status, by result: success, failure,"
            " unsupported (the server has no object tagging).",
            ["result"],
            registry=registry,
        )
        for result in TAGGING_RESULTS:
            self.tagging.labels(result=result)
        self.deleted_runs = Counter(
            "runlog_relay_retention_deleted_runs_total",
            "Sealed runs deleted from the volume by local retention.",
            registry=registry,
        )
        self.deleted_bytes = Counter(
            "runlog_relay_retention_deleted_bytes_total",
            "Bytes of run-log files deleted from the volume by local retention.",
            registry=registry,
        )
        self.would_delete_runs = Counter(
            "runlog_relay_retention_would_delete_runs_total",
            "Sealed runs local retention would have deleted (dry run).",
            registry=registry,
        )
        self.would_delete_bytes = Counter(
            "runlog_relay_retention_would_delete_bytes_total",
            "Bytes local retention would have deleted (dry run).",
            registry=registry,
        )
        self.retention_failures = Counter(
            "runlog_relay_retention_failures_total",
            "Runs local retention did not delete when due, by reason: bucket_differs (the"
            " bucket no longer holds the local files), changed (written since the seal),"
            " not_removable (permissions, read-only volume, something else in the folder),"
            " error.",
            ["reason"],
            registry=registry,
        )
        for reason in RETENTION_FAILURES:
            self.retention_failures.labels(reason=reason)


class OperatorMetrics:
    """Reconcile activity and store readiness, from the operator."""

    def __init__(self, registry: CollectorRegistry) -> None:
        Counter, Gauge, _ = _metric_types(registry)  # the classes, by their names
        self.reconciles = Counter(
            "runlog_relay_operator_reconciles_total",
            "RunLogStore reconciliations by result: ready, not_ready, error.",
            ["result"],
            registry=registry,
        )
        self.store_ready = Gauge(
            "runlog_relay_store_ready",
            "1 when a RunLogStore is Ready (bucket reachable with its credentials), else 0.",
            ["namespace", "store"],
            registry=registry,
        )
        self.injections = Counter(
            "runlog_relay_operator_injections_total",
            "Pod admission decisions by result: injected, skipped, failed.",
            ["result"],
            registry=registry,
        )
        self.leading = Gauge(
            "runlog_relay_operator_leading",
            "1 on the replica that is the active operator (always, when standalone), 0 on"
            " standbys.",
            registry=registry,
        )
        self.webhook_certificate_expiry = Gauge(
            "runlog_relay_operator_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires (Unix time); it is renewed well"
            " before.",
            registry=registry,
        )
