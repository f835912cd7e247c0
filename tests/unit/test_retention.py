"""sidecar.retention: a sealed run leaves the volume DURATION later, verified, and only then.

Real files in a temporary folder, the stage driven without its thread (``expire_due``)
on a fake wall clock; the bucket is tests.support.fakes.FakeStore holding exactly what
the sidecar would have uploaded (the layout's bodies and their ETags).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fakes import FakeClock, FakeStore, opaque_etag, unreachable

from runlog_relay.config.models import LocalRetention as RetentionSpec
from runlog_relay.config.settings import SidecarSettings, load_sidecar_settings
from runlog_relay.errors import ConfigError
from runlog_relay.layout import Layout, encode_body, key_for
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.sidecar.retention import RETRY_SECONDS, LocalRetention
from runlog_relay.sidecar.runs import Seal
from runlog_relay.stableread import read_stable

DAY = 86400.0


class Volume:
    """A source folder, its bucket, and a retention stage over them."""

    def __init__(
        self,
        root: Path,
        *,
        after: str = "1d",
        dry_run: bool = False,
        layout: Layout = Layout.CHUNKED,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.settings = SidecarSettings(
            source=root,
            layout=layout,
            local_retention=RetentionSpec(delete_after=after, dry_run=dry_run),
        )
        self.clock = FakeClock(start=1_000_000.0)
        self.registry = CollectorRegistry()
        self.store = FakeStore()
        self.retention = LocalRetention(
            lambda: self.settings,
            SidecarMetrics(self.registry).runs,
            lambda: self.store,
            clock=self.clock,
        )
        self.serials = iter(range(1, 1000))

    def run(self, run_id: str, *names: str) -> list[Path]:
        """Write a run and mirror it into the fake bucket."""
        paths = []
        relatives = (
            [f"{run_id}.json"]
            if self.layout is Layout.SINGLE
            else [f"{run_id}/{name}.json" for name in (names or ("RunLog",))]
        )
        for relative in relatives:
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"status": "SUCCESS", "file": relative}))
            self.upload(relative)
            paths.append(path)
        return paths

    def upload(self, relative: str) -> None:
        body = encode_body((self.root / relative).read_bytes(), self.layout)
        etag = read_stable(self.root / relative, root=self.root, layout=self.layout).etag
        self.store.objects[key_for(relative, self.layout).key] = (body, etag)

    def seal(self, run_id: str) -> Seal:
        seal = Seal(
            run_id=run_id,
            status="SUCCESS",
            serial=next(self.serials),
            sealed_at=self.clock(),
            clock_start=self.clock(),
            files={},
            objects={},
        )
        self.retention.run_sealed(seal)
        return seal

    def after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.retention.expire_due()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return Volume(tmp_path / "logs")


def test_a_sealed_run_is_deleted_after_the_duration_and_never_before(volume: Volume) -> None:
    paths = volume.run("r1", "RunLog", "BranchLog-map.a")
    volume.run("r2")  # not sealed: stays
    volume.seal("r1")
    volume.after(DAY - 1)
    assert all(p.exists() for p in paths)
    volume.after(1)
    assert not (volume.root / "r1").exists()
    assert (volume.root / "r2" / "RunLog.json").exists()
    assert volume.store.lists == ["r1/"]  # verified once more, by one listing of its prefix
    assert volume.value("runlog_relay_retention_deleted_runs_total") == 1
    assert volume.value("runlog_relay_retention_deleted_bytes_total") == sum(
        len(json.dumps({"status": "SUCCESS", "file": f"r1/{n}.json"}))
        for n in ("RunLog", "BranchLog-map.a")
    )
    assert set(volume.store.objects) == {"r1/RunLog", "r1/BranchLog-map.a", "r2/RunLog"}


def test_the_single_layout_deletes_the_run_file(tmp_path: Path) -> None:
    volume = Volume(tmp_path / "logs", layout=Layout.SINGLE)
    (path,) = volume.run("r1")
    volume.seal("r1")
    volume.after(DAY)
    assert not path.exists()
    assert volume.value("runlog_relay_retention_deleted_runs_total") == 1


def test_dry_run_only_logs_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    volume = Volume(tmp_path / "logs", dry_run=True)
    paths = volume.run("r1")
    volume.seal("r1")
    with caplog.at_level(logging.INFO, logger="runlog_relay.sidecar.retention"):
        volume.after(DAY)
        volume.after(DAY)  # said once, not every day
    assert all(p.exists() for p in paths)
    assert volume.value("runlog_relay_retention_would_delete_runs_total") == 1
    assert (
        volume.value("runlog_relay_retention_would_delete_bytes_total") == paths[0].stat().st_size
    )
    assert volume.value("runlog_relay_retention_deleted_runs_total") == 0
    assert [r.message for r in caplog.records if "would delete run r1" in r.message]


@pytest.mark.parametrize("damage", ["missing", "other version"])
def test_a_run_the_bucket_does_not_hold_is_kept(volume: Volume, damage: str) -> None:
    paths = volume.run("r1", "RunLog", "BranchLog-x")
    if damage == "missing":
        del volume.store.objects["r1/BranchLog-x"]  # a lifecycle rule, a person
    else:
        paths[1].write_text('{"rewritten": true}')  # newer than the bucket's
    volume.seal("r1")
    volume.after(DAY)
    assert all(p.exists() for p in paths)
    assert volume.value("runlog_relay_retention_failures_total", reason="bucket_differs") == 1
    volume.after(RETRY_SECONDS * 10)
    assert volume.store.lists == ["r1/"]  # not tried again until the run is sealed again


def test_an_unsealed_run_is_not_deleted_and_a_new_seal_restarts_the_clock(volume: Volume) -> None:
    paths = volume.run("r1")
    volume.seal("r1")
    volume.after(DAY / 2)
    volume.retention.run_unsealed("r1")  # runnable's retry writes it again
    volume.after(DAY / 2)
    assert paths[0].exists()
    volume.seal("r1")
    volume.after(DAY - 1)
    assert paths[0].exists()
    volume.after(1)
    assert not paths[0].exists()


def test_symlinks_are_never_followed_and_the_folder_is_left_whole(
    volume: Volume, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "RunLog.json"
    precious.write_text('{"status": "SUCCESS"}')
    # A run "folder" that is a link out of the volume.
    (volume.root / "linked").symlink_to(outside, target_is_directory=True)
    volume.store.objects["linked/RunLog"] = (b"", read_stable(precious).etag)
    # A run folder holding a link among its files.
    paths = volume.run("r1")
    (volume.root / "r1" / "BranchLog-x.json").symlink_to(precious)
    for run_id in ("linked", "r1"):
        volume.seal(run_id)
    volume.after(DAY)
    assert precious.exists() and (volume.root / "linked").is_symlink()
    assert paths[0].exists() and (volume.root / "r1" / "BranchLog-x.json").is_symlink()
    assert volume.value("runlog_relay_retention_failures_total", reason="not_removable") == 2


def test_anything_else_in_the_folder_keeps_it(volume: Volume) -> None:
    paths = volume.run("r1")
    (volume.root / "r1" / "notes.txt").write_text("mine")
    (volume.root / "r1" / "sub").mkdir()
    volume.seal("r1")
    volume.after(DAY)
    assert paths[0].exists() and (volume.root / "r1" / "notes.txt").exists()
    assert volume.value("runlog_relay_retention_failures_total", reason="not_removable") == 1


def test_a_failed_listing_is_tried_again(volume: Volume) -> None:
    paths = volume.run("r1")
    volume.store.fail_lists.append(unreachable("listing"))
    volume.seal("r1")
    volume.after(DAY)
    assert paths[0].exists()
    assert volume.value("runlog_relay_retention_failures_total", reason="error") == 1
    volume.after(RETRY_SECONDS)
    assert not paths[0].exists()


def test_the_clock_starts_at_the_seals_clock_start(volume: Volume) -> None:
    paths = volume.run("r1")
    seal = volume.seal("r1")
    # For a run found complete at start-up the run stage gives its last write (it was
    # sealed, by the process before, no earlier).
    earlier = dataclasses.replace(seal, serial=99, clock_start=volume.clock() - DAY)
    volume.retention.run_unsealed("r1")
    volume.retention.run_sealed(earlier)
    volume.after(0)
    assert not paths[0].exists()


def test_after_a_restart_the_clock_waits_for_the_buckets_last_upload(volume: Volume) -> None:
    paths = volume.run("r1", "RunLog", "BranchLog-b")
    # Written a day ago, but its branch log reached the bucket only an hour ago (the
    # sidecar was down): the seal, by whichever process, is no older than that upload.
    hour_ago = datetime.fromtimestamp(volume.clock() - 3600, tz=UTC)
    volume.store.modified["r1/BranchLog-b"] = hour_ago
    seal = dataclasses.replace(volume.seal("r1"), serial=99, clock_start=volume.clock() - DAY)
    volume.retention.run_unsealed("r1")
    volume.retention.run_sealed(seal)
    volume.after(0)
    assert all(p.exists() for p in paths)
    assert volume.value("runlog_relay_retention_failures_total", reason="changed") == 0
    assert volume.retention.pending() == {"r1": volume.clock() + DAY - 3600}
    volume.after(DAY - 3601)
    assert all(p.exists() for p in paths)
    volume.after(1)
    assert not (volume.root / "r1").exists()


@pytest.mark.parametrize("run_id", ["..", "../outside", ".hidden", "a/b", ""])
def test_a_run_id_that_is_not_one_name_is_never_a_path(
    volume: Volume, tmp_path: Path, run_id: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "RunLog.json").write_text('{"status": "SUCCESS"}')
    hidden = volume.root / ".hidden"
    hidden.mkdir()
    (hidden / "RunLog.json").write_text('{"status": "SUCCESS"}')
    volume.seal(run_id)
    volume.after(DAY)
    assert (outside / "RunLog.json").exists() and (hidden / "RunLog.json").exists()
    assert volume.store.lists == []  # refused before anything is asked or opened
    assert volume.value("runlog_relay_retention_failures_total", reason="not_removable") == 1


def test_a_bucket_whose_etags_are_not_md5s_is_confirmed_by_the_stored_md5(volume: Volume) -> None:
    paths = volume.run("r1", "RunLog", "BranchLog-b")
    kept = volume.run("r2")
    # SSE-KMS: the listing shows ETags that are not the bodies' MD5s.
    for key, (body, etag) in list(volume.store.objects.items()):
        data = b'{"another": "version"}' if key.startswith("r2/") else body
        volume.store.objects[key] = (data, opaque_etag(etag))
    volume.seal("r1")
    volume.seal("r2")
    volume.after(DAY)
    assert not any(p.exists() for p in paths)
    assert sorted(volume.store.heads) == ["r1/BranchLog-b", "r1/RunLog", "r2/RunLog"]
    assert kept[0].exists()  # its stored MD5 is another version's
    assert volume.value("runlog_relay_retention_failures_total", reason="bucket_differs") == 1


def test_turning_retention_off_stops_what_was_planned(volume: Volume) -> None:
    paths = volume.run("r1")
    seal = volume.seal("r1")
    volume.settings = SidecarSettings(source=volume.root)
    volume.retention.reschedule([seal])
    volume.after(DAY * 2)
    assert paths[0].exists() and volume.retention.pending() == {}


def test_read_only_volume_is_reported_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = Volume(tmp_path / "logs")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only mount answers
    with caplog.at_level(logging.WARNING, logger="runlog_relay.sidecar.retention"):
        volume.retention.start()
        volume.retention.stop()
    assert any("is not writable" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("1h30m", 5400),
        ("3600", 3600),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert RetentionSpec(delete_after=text).seconds == seconds


@pytest.mark.parametrize("text", ["soon", "7 days", "-1h", "1y", ""])
def test_a_bad_duration_is_refused_with_the_field_named(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_sidecar_settings({"local_retention": {"delete_after": text}})
    assert "local_retention.delete_after" in str(refused.value), refused.value
