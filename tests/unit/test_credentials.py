"""Credential sources: which plan the settings resolve to, and the renewal of temporary
credentials (a fake clock and a fake fetch around the real RefreshingProvider)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio.credentials import Credentials

from runlog_relay.config.credentials import (
    ContainerCredentials,
    InstanceProfile,
    StaticKeys,
    WebIdentity,
    check_container_uri,
    describe,
    sts_endpoint_for,
)
from runlog_relay.config.settings import load_sidecar_settings
from runlog_relay.errors import ConfigError, CredentialsError
from runlog_relay.objectstore import (
    EXPIRY_MARGIN_SECONDS,
    RENEW_RETRY_SECONDS,
    RefreshingProvider,
    credentials_provider,
)

SECRET = "wJalrXUtnFEMI-credentials-K7MDENG"
TOKEN = "IQoJb3JpZ2luX2VjEJr-session-token"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("CREDENTIALS", "STS_ENDPOINT", "SESSION_TOKEN", "ACCESS_KEY_ID"):
        monkeypatch.delenv(f"RUNLOG_RELAY_{name}", raising=False)


def env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# --------------------------------------------------------------------------- the plan


def test_nothing_given_means_runnables_default_keys() -> None:
    plan = load_sidecar_settings().credentials()
    assert plan == StaticKeys("minioadmin", "minioadmin", None, origin="default")
    assert describe(plan) == "runnable's default minioadmin keys"


def test_auto_prefers_static_keys_over_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env(
        monkeypatch,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_SESSION_TOKEN=TOKEN,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "token"),
        AWS_ROLE_ARN="arn:aws:iam::1:role/r",
        AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/credentials",
    )
    plan = load_sidecar_settings().credentials()
    assert plan == StaticKeys("AKIAEXAMPLE", SECRET, TOKEN, origin="environment")
    assert describe(plan) == "static keys from the environment with a session token"


def test_auto_picks_web_identity_then_container(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env(
        monkeypatch,
        AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/credentials",
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "pod-token"),
    )
    assert load_sidecar_settings().credentials() == ContainerCredentials(
        uri="http://169.254.170.23/v1/credentials", token_file=tmp_path / "pod-token"
    )
    env(
        monkeypatch,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "token"),
        AWS_ROLE_ARN="arn:aws:iam::1:role/r",
        AWS_REGION="eu-west-1",
    )
    assert load_sidecar_settings().credentials() == WebIdentity(
        token_file=tmp_path / "token",
        sts_endpoint="https://sts.eu-west-1.amazonaws.com",
        role_arn="arn:aws:iam::1:role/r",
    )


def test_auto_needs_the_role_arn_for_web_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As the AWS SDKs: a token file alone is not IRSA (no role to assume)."""
    env(monkeypatch, AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "token"))
    assert isinstance(load_sidecar_settings().credentials(), StaticKeys)
    explicit = load_sidecar_settings({"credential_source": "web-identity"}).credentials()
    assert explicit == WebIdentity(tmp_path / "token", "https://sts.amazonaws.com")


def test_sts_endpoint_from_option_then_aws_variable_then_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env(
        monkeypatch,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "t"),
        AWS_ROLE_ARN="arn:aws:iam::1:role/r",
        AWS_REGION="cn-north-1",
    )
    plan = load_sidecar_settings().credentials()
    assert isinstance(plan, WebIdentity) and plan.sts_endpoint == sts_endpoint_for("cn-north-1")
    assert plan.sts_endpoint == "https://sts.cn-north-1.amazonaws.com.cn"
    env(monkeypatch, AWS_ENDPOINT_URL_STS="https://sts.internal:8443")
    plan = load_sidecar_settings().credentials()
    assert isinstance(plan, WebIdentity) and plan.sts_endpoint == "https://sts.internal:8443"
    plan = load_sidecar_settings({"sts_endpoint": "http://127.0.0.1:5001"}).credentials()
    assert isinstance(plan, WebIdentity) and plan.sts_endpoint == "http://127.0.0.1:5001"


def test_explicit_sources_name_what_they_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="needs AWS_WEB_IDENTITY_TOKEN_FILE"):
        load_sidecar_settings({"credential_source": "web-identity"}).credentials()
    with pytest.raises(ConfigError, match="needs AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        load_sidecar_settings({"credential_source": "container"}).credentials()
    env(monkeypatch, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/credentials")
    with pytest.raises(ConfigError, match="instance, but AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        load_sidecar_settings({"credential_source": "instance"}).credentials()


def test_instance_profile_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    env(monkeypatch, AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:1338")
    assert isinstance(load_sidecar_settings().credentials(), StaticKeys)
    plan = load_sidecar_settings({"credential_source": "instance"}).credentials()
    assert plan == InstanceProfile(endpoint="http://127.0.0.1:1338")


def test_ecs_relative_uri_goes_to_the_ecs_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    env(monkeypatch, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="v2/credentials/abc")
    plan = load_sidecar_settings().credentials()
    assert plan == ContainerCredentials(uri="http://169.254.170.2/v2/credentials/abc")


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("http://169.254.170.23/v1/credentials", True),  # EKS Pod Identity agent
        ("http://[fd00:ec2::23]/v1/credentials", True),
        ("http://169.254.170.2/creds", True),  # ECS agent
        ("http://127.0.0.1:8080/creds", True),
        ("http://localhost/creds", True),
        ("https://credentials.example.com/creds", True),
        ("http://credentials.example.com/creds", False),  # the token would travel in clear
        ("http://10.0.0.5/creds", False),
        ("file:///etc/passwd", False),
    ],
)
def test_container_uri_hosts(uri: str, allowed: bool) -> None:
    if allowed:
        assert check_container_uri(uri) == uri
    else:
        with pytest.raises(ValueError):
            check_container_uri(uri)


def test_an_unsafe_container_uri_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    env(monkeypatch, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://evil.example/creds")
    with pytest.raises(ConfigError, match="clear text"):
        load_sidecar_settings().credentials()


def test_half_a_key_pair_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    env(monkeypatch, AWS_ACCESS_KEY_ID="AKIAEXAMPLE")
    with pytest.raises(ConfigError, match="no secret access key") as caught:
        load_sidecar_settings().credentials()
    assert "AKIAEXAMPLE" not in str(caught.value)


def test_session_token_file_wins_and_is_reread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env(monkeypatch, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY=SECRET)
    env(monkeypatch, AWS_SESSION_TOKEN="from-env")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = load_sidecar_settings({"session_token_file": token})
    first = settings.credentials()
    assert isinstance(first, StaticKeys) and first.session_token == TOKEN
    token.write_text("rotated-token")
    second = settings.credentials()
    assert isinstance(second, StaticKeys) and second.session_token == "rotated-token"
    assert first != second  # what the sidecar compares to swap its client
    assert settings.mounted_files() == [token]


def test_secret_settings_are_refused_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    for key in ("sessionToken", "containerAuthorizationToken"):
        config.write_text(f"{key}: {TOKEN}\n")
        with pytest.raises(ConfigError, match="must not contain") as caught:
            load_sidecar_settings({}, config)
        assert TOKEN not in str(caught.value)


def test_config_file_may_choose_the_source(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("credentials: web-identity\nstsEndpoint: https://sts.internal\n")
    settings = load_sidecar_settings({}, config)
    assert settings.credential_source == "web-identity"
    assert settings.sts_endpoint == "https://sts.internal"


def test_plans_and_descriptions_show_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env(
        monkeypatch,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_SESSION_TOKEN=TOKEN,
    )
    settings = load_sidecar_settings()
    plan = settings.credentials()
    shown = [repr(plan), str(plan), describe(plan), repr(settings), str(settings.describe())]
    shown.append(repr(ContainerCredentials(uri="http://127.0.0.1/x", token=TOKEN)))
    for text in shown:
        assert SECRET not in text and TOKEN not in text


# --------------------------------------------------------------------------- renewal


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def expiring(clock: Clock, seconds: float, access: str = "ASIA1") -> Credentials:
    expiry = datetime.fromtimestamp(clock.now + seconds, UTC)
    return Credentials(access, SECRET, TOKEN, expiry)


class Fetch:
    """Answers with the next item: Credentials, or an exception to raise."""

    def __init__(self, *answers: Credentials | BaseException | Callable[[], Credentials]):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> Credentials:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer


def test_credentials_are_cached_until_the_renewal_point() -> None:
    clock = Clock()
    fetch = Fetch(lambda: expiring(clock, 3600, "ASIA1"), lambda: expiring(clock, 3600, "ASIA2"))
    provider = RefreshingProvider("web identity", fetch, clock=clock)
    assert provider.retrieve().access_key == "ASIA1"
    clock.now += 3600 - 301  # 5 minutes and a second before expiry: still cached
    for _ in range(100):
        assert provider.retrieve().access_key == "ASIA1"
    assert fetch.calls == 1
    clock.now += 2  # inside the last 5 minutes: renewed, ahead of expiry
    assert provider.retrieve().access_key == "ASIA2"
    assert fetch.calls == 2


def test_short_lived_credentials_renew_at_half_life_or_before_the_signing_margin() -> None:
    clock = Clock()
    fetch = Fetch(lambda: expiring(clock, 60, "A"), lambda: expiring(clock, 60, "B"))
    provider = RefreshingProvider("container credentials", fetch, clock=clock)
    provider.retrieve()
    clock.now += 29.9
    assert provider.retrieve().access_key == "A"
    clock.now += 0.2
    assert provider.retrieve().access_key == "B"

    clock2 = Clock()
    tight = Fetch(lambda: expiring(clock2, 14, "C"), lambda: expiring(clock2, 14, "D"))
    provider = RefreshingProvider("container credentials", tight, clock=clock2)
    provider.retrieve()
    clock2.now += 14 - EXPIRY_MARGIN_SECONDS  # never signs inside the last 10 s
    assert provider.retrieve().access_key == "D"


def test_a_failed_early_renewal_keeps_valid_credentials_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    boom = ValueError(
        "https://sts.amazonaws.com?WebIdentityToken=eyJsecret failed with HTTP status code 503"
    )
    fetch = Fetch(
        lambda: expiring(clock, 3600, "OLD"),
        boom,
        boom,
        lambda: expiring(clock, 3600, "NEW"),
    )
    provider = RefreshingProvider("web identity", fetch, clock=clock)
    provider.retrieve()
    clock.now += 3600 - 200  # renewal due, 190 s of validity left
    with caplog.at_level(logging.WARNING, logger="runlog_relay.objectstore"):
        assert provider.retrieve().access_key == "OLD"
        for _ in range(50):  # no hammering: the next attempt waits RENEW_RETRY_SECONDS
            assert provider.retrieve().access_key == "OLD"
        assert fetch.calls == 2
        clock.now += RENEW_RETRY_SECONDS
        assert provider.retrieve().access_key == "OLD"
        assert fetch.calls == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same problem is reported once
    assert "the endpoint answered HTTP 503" in warnings[0]
    assert "eyJsecret" not in caplog.text
    clock.now += RENEW_RETRY_SECONDS
    assert provider.retrieve().access_key == "NEW"


def test_without_valid_credentials_a_failure_is_a_retryable_credentials_error() -> None:
    clock = Clock()
    fetch = Fetch(
        lambda: expiring(clock, 60, "OLD"),
        ValueError("http://169.254.170.23/v1/credentials failed with HTTP status code 500"),
        lambda: expiring(clock, 60, "NEW"),
    )
    provider = RefreshingProvider("container credentials", fetch, clock=clock)
    provider.retrieve()
    clock.now += 60 - EXPIRY_MARGIN_SECONDS
    with pytest.raises(CredentialsError) as caught:
        provider.retrieve()
    assert str(caught.value) == (
        "obtaining credentials (container credentials) failed: the endpoint answered HTTP 500"
    )
    assert caught.value.code == "CredentialsUnavailable"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert provider.retrieve().access_key == "NEW"  # heals by itself on the next call


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (OSError("boom"), "unexpected answer (OSError)"),
        (KeyError("AccessKeyId"), "unexpected answer (KeyError)"),
        (
            ValueError("All providers fail, see https://x?Token=s3cr3t"),
            "unexpected answer (ValueError)",
        ),
    ],
)
def test_failure_messages_never_repeat_the_sdks_text(exc: BaseException, problem: str) -> None:
    provider = RefreshingProvider("web identity", Fetch(exc), clock=Clock())
    with pytest.raises(CredentialsError, match="failed: ") as caught:
        provider.retrieve()
    assert str(caught.value).endswith(problem)
    assert "s3cr3t" not in str(caught.value)


def test_unreachable_credentials_endpoint(tmp_path: Path) -> None:
    """A real connection to a closed port, through the SDK's container fetch."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("t0k3n")
    provider = credentials_provider(
        ContainerCredentials(uri=f"http://127.0.0.1:{port}/v1/credentials", token_file=token)
    )
    with pytest.raises(CredentialsError, match=r"endpoint unreachable \(\w+") as caught:
        provider.retrieve()
    assert "t0k3n" not in str(caught.value)


def test_a_missing_token_file_is_named(tmp_path: Path) -> None:
    provider = credentials_provider(
        WebIdentity(token_file=tmp_path / "gone", sts_endpoint="http://127.0.0.1:9")
    )
    with pytest.raises(CredentialsError, match=r"cannot read the web identity token file"):
        provider.retrieve()


def test_static_keys_need_no_renewal() -> None:
    provider = credentials_provider(StaticKeys("AKIAEXAMPLE", SECRET, TOKEN))
    creds = provider.retrieve()
    assert (creds.access_key, creds.secret_key, creds.session_token) == (
        "AKIAEXAMPLE",
        SECRET,
        TOKEN,
    )
    assert not isinstance(provider, RefreshingProvider)


def test_long_lived_answers_are_kept() -> None:
    clock = Clock()
    fetch = Fetch(Credentials("AKIA", SECRET))
    provider = RefreshingProvider("instance profile", fetch, clock=clock)
    provider.retrieve()
    clock.now += timedelta(days=30).total_seconds()
    assert provider.retrieve().access_key == "AKIA" and fetch.calls == 1


@pytest.mark.parametrize(
    "value", ["sts.amazonaws.com", "ftp://sts", "https://user:pw@sts.internal"]
)
def test_sts_endpoint_must_be_an_http_url(value: str) -> None:
    with pytest.raises(ConfigError, match="sts_endpoint: must be an http"):
        load_sidecar_settings({"sts_endpoint": value})
