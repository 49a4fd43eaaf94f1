"""The etcd backend's config and value format, without an etcd."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sdbridge.registry.config import RegistryConfig
from sdbridge.registry.etcd_store import decode_instance, encode_value, lease_ttl
from sdbridge.registry.instance import RegistrationError

ETCD = {"endpoints": ["http://127.0.0.1:2379"]}


def test_etcd_backend_defaults_min_ttl_to_two_seconds_and_refuses_less() -> None:
    config = RegistryConfig.model_validate({"backend": "etcd", "etcd": ETCD})
    assert config.min_ttl == 2.0
    assert config.etcd is not None
    assert config.etcd.prefix == "/sdbridge/registry/"
    with pytest.raises(ValidationError, match="at least 2s with backend etcd"):
        RegistryConfig.model_validate({"backend": "etcd", "etcd": ETCD, "min_ttl": "1s"})
    assert RegistryConfig().min_ttl == 1.0  # SQLite keeps its bound


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({"backend": "etcd"}, "needs registry.etcd.endpoints"),
        ({"etcd": ETCD}, "applies to backend etcd only"),
        ({"backend": "etcd", "etcd": {**ETCD, "prefix": "sdbridge"}}, "must start and end with /"),
        ({"backend": "etcd", "etcd": {"endpoints": ["ftp://x"]}}, "must be http"),
        ({"backend": "etcd", "etcd": {**ETCD, "username": "u"}}, "given together"),
        ({"backend": "consul"}, "backend"),
    ],
)
def test_bad_etcd_settings_are_config_errors(registry: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RegistryConfig.model_validate(registry)


def test_the_password_never_shows() -> None:
    config = RegistryConfig.model_validate(
        {"backend": "etcd", "etcd": {**ETCD, "username": "u", "password": "s3cret"}}
    )
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config)


@pytest.mark.parametrize(("ttl", "lease"), [(2, 2), (2.5, 3), (30, 30), (30.0001, 31), (0.2, 1)])
def test_lease_ttl_rounds_up_to_whole_seconds(ttl: float, lease: int) -> None:
    assert lease_ttl(ttl) == lease


labels = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.text(max_size=20), max_size=4
)


@given(labels=labels, ttl=st.integers(1, 10**6), registered=st.floats(0, 4e9))
def test_values_round_trip(labels: dict[str, str], ttl: int, registered: float) -> None:
    value = encode_value("127.0.0.1:9100", labels, ttl, registered)
    instance = decode_instance("web/w-1", value, now=1000.0)
    assert instance.labels == labels
    assert instance.ttl == ttl
    assert instance.expires_at == 1000.0 + ttl
    assert instance.registered_at == round(registered, 3)


@given(name=st.text(max_size=30), value=st.binary(max_size=200))
def test_any_key_or_value_is_an_instance_or_a_registration_error(name: str, value: bytes) -> None:
    try:
        instance = decode_instance(name, value, now=0.0)
    except RegistrationError:
        return
    assert f"{instance.service}/{instance.instance}" == name


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1]",
        b'{"address": "127.0.0.1:1", "ttl": 5, "color": "red"}',
        b'{"address": "127.0.0.1:1", "ttl": 1.5}',
        b'{"address": "127.0.0.1:1", "ttl": true}',
        b'{"address": "nope", "ttl": 5}',
        b'{"address": "127.0.0.1:1", "ttl": 5, "labels": {"__meta_x": "y"}}',
    ],
)
def test_values_that_are_no_registration_are_refused(value: bytes) -> None:
    with pytest.raises(RegistrationError):
        decode_instance("web/w1", value, now=0.0)
