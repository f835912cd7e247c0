"""The endpoint allow-list and what makes a spec change a question for the authorizer."""

from __future__ import annotations

import pytest

from runlog_relay.operator.policy import EndpointPolicy, credential_exposure
from runlog_relay.operator.settings import OperatorSettings


def test_an_empty_allow_list_allows_everything() -> None:
    assert EndpointPolicy().denial("http://169.254.169.254") is None


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("https://s3.eu-west-1.amazonaws.com", True),
        ("https://bucket.s3.eu-west-1.amazonaws.com", True),
        ("https://amazonaws.com", False),  # '*.' needs a label before
        ("https://s3.amazonaws.com.evil.example", False),
        ("http://s3.eu-west-1.amazonaws.com", False),  # the scheme is part of it
        ("https://s3.eu-west-1.amazonaws.com:8443", False),  # no port: 443 only
        ("http://minio.storage.svc:9000", True),
        ("http://MINIO.storage.svc:9000", True),  # host names ignore case
        ("http://minio.storage.svc:9001", False),
        ("http://minio.storage.svc", False),
        ("https://ceph.internal:7480", True),  # ':*' any port
        ("https://ceph.internal", True),
        ("http://10.0.0.5:9000", False),
    ],
)
def test_patterns_match_scheme_host_and_port(endpoint: str, allowed: bool) -> None:
    policy = EndpointPolicy.from_patterns(
        ["https://*.amazonaws.com", "http://minio.storage.svc:9000", "https://ceph.internal:*"]
    )
    denial = policy.denial(endpoint)
    assert (denial is None) is allowed
    if denial:
        assert "allow-list" in denial and "https://*.amazonaws.com" in denial


@pytest.mark.parametrize("bad", ["minio:9000", "ftp://x", "https://a.*.com", "http://x:99999"])
def test_bad_patterns_are_clear_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed endpoint"):
        EndpointPolicy.from_patterns([bad])
    with pytest.raises(ValueError, match="allowed endpoint"):
        OperatorSettings(allowed_endpoints=[bad])


def test_credential_exposure_is_where_and_which_keys_go() -> None:
    spec = {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "creds"}}
    same = {**spec, "sync": {"concurrency": 3}, "bucket": "other/prefix", "layout": "single"}
    assert credential_exposure(spec) == credential_exposure(same)
    for changed in (
        {**spec, "endpoint": "http://elsewhere:9000"},
        {**spec, "tls": {"insecureSkipVerify": True}},
        {**spec, "credentialsSecretRef": {"name": "other"}},
        {**spec, "credentials": {"secretRef": {"name": "creds"}}},
    ):
        assert credential_exposure(spec) != credential_exposure(changed)
    assert credential_exposure(None) == credential_exposure({})
