"""ConfigWatcher: reloads on a kubelet-style ``..data`` symlink swap, keeps the last good
config when the new one is invalid. Real files, real symlinks, real polling thread."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tests.support.credentials import key_pair
from tests.support.mounts import AtomicMount

from runlog_relay.config.models import CredentialsSecretRef, StoreSpec
from runlog_relay.config.settings import SidecarSettings, load_sidecar_settings
from runlog_relay.errors import ConfigError
from runlog_relay.metrics import SidecarMetrics
from runlog_relay.operator.reconcile import render_sidecar_config
from runlog_relay.sidecar.reload import ConfigWatcher

SECRET_ID = "AKIAROTATEDKEYID0001"
SECRET_KEY = "s3cr3t-value-that-must-never-be-logged"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RUNLOG_RELAY_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.fixture()
def mounts(tmp_path: Path) -> tuple[AtomicMount, AtomicMount]:
    config = AtomicMount(tmp_path / "etc" / "runlog-relay")
    secret = AtomicMount(tmp_path / "credentials")
    secret.write({"access-key-id": "first-id", "secret-access-key": "first-key"})
    return config, secret


def config_text(secret: AtomicMount, **extra: object) -> str:
    lines = [
        "source: /tmp/run_logs",
        "endpoint: http://minio.example:9000",
        f"accessKeyIdFile: {secret.path('access-key-id')}",
        f"secretAccessKeyFile: {secret.path('secret-access-key')}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[SidecarSettings] = []
        self.changed = threading.Event()

    def __call__(self, settings: SidecarSettings) -> None:
        self.calls.append(settings)
        self.changed.set()


def make_watcher(
    config: AtomicMount, recorder: Recorder, metrics: SidecarMetrics | None = None, **kw: object
) -> ConfigWatcher:
    return ConfigWatcher(config.path("config.yaml"), recorder, metrics=metrics, **kw)  # type: ignore[arg-type]


def test_configmap_swap_reloads_the_config(mounts: tuple[AtomicMount, AtomicMount]) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret, bucket="first/runs")})
    registry = CollectorRegistry()
    recorder = Recorder()
    watcher = make_watcher(config, recorder, SidecarMetrics(registry))
    assert watcher.current.bucket == "first/runs"
    assert watcher.poll() is None  # nothing changed
    assert recorder.calls == []

    config.write({"config.yaml": config_text(secret, bucket="second/runs", layout="single")})
    new = watcher.poll()

    assert new is not None and recorder.calls == [new]
    assert (new.bucket_name, new.prefix, new.layout.value) == ("second", "runs", "single")
    assert watcher.current is new
    assert watcher.poll() is None  # applied once, not on every poll
    applied = registry.get_sample_value("runlog_relay_config_reloads_total", {"result": "applied"})
    assert applied == 1


def test_rotated_secret_files_reload_with_the_new_credentials(
    mounts: tuple[AtomicMount, AtomicMount],
) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret)})
    recorder = Recorder()
    watcher = make_watcher(config, recorder)
    assert key_pair(watcher.current) == ("first-id", "first-key")
    assert secret.path("access-key-id") in watcher.watched

    secret.write({"access-key-id": SECRET_ID, "secret-access-key": SECRET_KEY})
    new = watcher.poll()

    assert new is not None
    assert key_pair(new) == (SECRET_ID, SECRET_KEY)
    assert len(recorder.calls) == 1


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("endpoint: ftp://nowhere\n", "endpoint"),
        ("sync:\n  concurrency: 0\n", "sync.concurrency"),
        ("endpoint: [unclosed\n", "not valid YAML"),
        ("secretAccessKey: inline-secret\n", "must not contain secret_access_key"),
    ],
)
def test_invalid_config_is_rejected_and_the_last_good_one_stays(
    mounts: tuple[AtomicMount, AtomicMount],
    caplog: pytest.LogCaptureFixture,
    bad: str,
    named: str,
) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret, bucket="good/runs")})
    registry = CollectorRegistry()
    recorder = Recorder()
    watcher = make_watcher(config, recorder, SidecarMetrics(registry))
    good = watcher.current

    with caplog.at_level(logging.ERROR, logger="runlog_relay.sidecar.reload"):
        config.write({"config.yaml": config_text(secret) + bad})
        assert watcher.poll() is None
        assert watcher.poll() is None  # the same bad content is reported once

    assert recorder.calls == [] and watcher.current is good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "last good config stays in force" in message and named in message
    assert "inline-secret" not in message and "first-key" not in message
    rejected = registry.get_sample_value(
        "runlog_relay_config_reloads_total", {"result": "rejected"}
    )
    assert rejected == 1

    # Fixing the file is picked up on the next poll.
    config.write({"config.yaml": config_text(secret, bucket="fixed/runs")})
    fixed = watcher.poll()
    assert fixed is not None and fixed.bucket == "fixed/runs"


def test_emptied_or_missing_credential_file_is_rejected(
    mounts: tuple[AtomicMount, AtomicMount], caplog: pytest.LogCaptureFixture
) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret)})
    recorder = Recorder()
    watcher = make_watcher(config, recorder)

    with caplog.at_level(logging.ERROR, logger="runlog_relay.sidecar.reload"):
        secret.write({"access-key-id": "", "secret-access-key": "still-here"})
        assert watcher.poll() is None
    assert "is empty" in caplog.text
    assert recorder.calls == []

    # The Secret loses a key entirely: the visible symlink now dangles.
    secret.write({"secret-access-key": "still-here"})
    assert watcher.poll() is None
    assert "cannot read credentials file" in caplog.text
    assert recorder.calls == []


def test_a_new_config_can_point_to_new_credential_files(
    mounts: tuple[AtomicMount, AtomicMount], tmp_path: Path
) -> None:
    config, secret = mounts
    config.write({"config.yaml": "endpoint: http://minio.example:9000\n"})
    recorder = Recorder()
    watcher = make_watcher(config, recorder)
    assert watcher.watched == [config.path("config.yaml")]

    config.write({"config.yaml": config_text(secret)})
    assert watcher.poll() is not None
    assert secret.path("secret-access-key") in watcher.watched

    secret.write({"access-key-id": "third-id", "secret-access-key": "third-key"})
    new = watcher.poll()
    assert new is not None and key_pair(new) == ("third-id", "third-key")


def test_overrides_keep_winning_over_the_file(mounts: tuple[AtomicMount, AtomicMount]) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret, bucket="from-file/a")})
    recorder = Recorder()
    watcher = make_watcher(config, recorder, overrides={"bucket": "from-cli/b"})
    assert watcher.current.bucket == "from-cli/b"
    config.write({"config.yaml": config_text(secret, bucket="from-file/c", layout="single")})
    new = watcher.poll()
    assert new is not None and new.bucket == "from-cli/b" and new.layout.value == "single"


def test_on_change_failure_keeps_the_watcher_and_the_old_config(
    mounts: tuple[AtomicMount, AtomicMount], caplog: pytest.LogCaptureFixture
) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret, bucket="one/a")})

    def explode(settings: SidecarSettings) -> None:
        raise RuntimeError("pipeline refused")

    watcher = ConfigWatcher(config.path("config.yaml"), explode)
    config.write({"config.yaml": config_text(secret, bucket="two/b")})
    with caplog.at_level(logging.ERROR, logger="runlog_relay.sidecar.reload"):
        assert watcher.poll() is None
    assert watcher.current.bucket == "one/a"
    assert "applying the new sidecar config failed" in caplog.text


def test_invalid_config_at_start_fails_loudly(mounts: tuple[AtomicMount, AtomicMount]) -> None:
    config, _secret = mounts
    config.write({"config.yaml": "layout: sideways\n"})
    with pytest.raises(ConfigError, match="layout"):
        make_watcher(config, Recorder())


def test_polling_thread_picks_up_a_swap(mounts: tuple[AtomicMount, AtomicMount]) -> None:
    config, secret = mounts
    config.write({"config.yaml": config_text(secret, bucket="before/x")})
    recorder = Recorder()
    with make_watcher(config, recorder, interval=0.05) as watcher:
        config.write({"config.yaml": config_text(secret, bucket="after/y")})
        assert recorder.changed.wait(5), "the watcher thread did not see the swap"
        assert recorder.calls[-1].bucket == "after/y"
        assert watcher.current.bucket == "after/y"
    assert watcher._thread is None  # stopped and joined


def test_operator_rendered_configmap_reloads_into_the_sidecar(
    mounts: tuple[AtomicMount, AtomicMount],
) -> None:
    """The operator's config.yaml, swapped in by the kubelet, is what the watcher applies."""
    config, _secret = mounts
    first = StoreSpec(endpoint="http://minio.example:9000", bucket="runs/team-a")
    config.write({"config.yaml": render_sidecar_config(first, namespace="ns", store="s")})
    recorder = Recorder()
    watcher = make_watcher(config, recorder)
    assert watcher.current.bucket == "runs/team-a"

    second = StoreSpec(
        endpoint="http://minio.example:9000",
        bucket="runs/team-b",
        layout="single",
        sync={"concurrency": 3},
    )
    config.write({"config.yaml": render_sidecar_config(second, namespace="ns", store="s")})
    new = watcher.poll()
    assert new is not None
    assert (new.bucket, new.layout.value, new.sync.concurrency) == ("runs/team-b", "single", 3)
    assert new.model_dump() == load_sidecar_settings({}, config.path("config.yaml")).model_dump()


def test_spec_with_credentials_renders_file_paths_not_values() -> None:
    spec = StoreSpec(credentials_secret_ref=CredentialsSecretRef(name="creds"))
    text = render_sidecar_config(spec, namespace="ns", store="s")
    assert "accessKeyIdFile: /var/run/secrets/runlog-relay/credentials/access-key-id" in text
    assert "AWS_ACCESS_KEY_ID" not in text
