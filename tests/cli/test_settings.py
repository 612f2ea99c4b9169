"""Settings: every field is read from CIDSERVE_<NAME>, legacy names still work, errors name
the variable and never echo a secret."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
from pydantic import SecretStr

from services.settings import PREFIX, SECRET_FIELDS, Settings, SettingsError, load_settings

# The names of the original design each field still accepts, after CIDSERVE_<NAME> (which
# wins when both are set), in the order they are tried.
LEGACY = {
    "port": ("PORT",),
    "data_dir": ("DATA_DIR",),
    "model_dir": ("MODEL_DIR",),
    "max_models_in_memory": ("MAX_MODELS_IN_MEMORY",),
    "inference_timeout_ms": ("CIDSERVE_INFERENCE_TIMEOUT", "INFERENCE_TIMEOUT"),
    "log_level": ("LOG_LEVEL",),
    "chain_rpc_url": ("AVALANCHE_RPC_URL",),
    "license_contract": ("CONTRACT_ADDRESS",),
}
LEGACY_NAMES = [(field, name) for field, names in LEGACY.items() for name in names]

ADDRESS = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
RPC = "http://127.0.0.1:8545"
# Fields whose values are checked beyond their type and bounds: (environment value, expected).
SPECIAL: dict[str, tuple[str, Any]] = {
    "ipfs_api_url": ("http://127.0.0.1:5001/", "http://127.0.0.1:5001"),
    "ipfs_gateway_url": ("https://gw.example:8080", "https://gw.example:8080"),
    "ipfs_find_timeout_s": ("5.5", 5.5),  # below CIDSERVE_IPFS_TIMEOUT_S
    "redis_url": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    "redis_prefix": ("tenant-a:", "tenant-a:"),
    "chain_rpc_url": (RPC, RPC),
    "license_contract": (ADDRESS, ADDRESS),  # needs an RPC URL: see needs()
    "private_key": ("0x" + "AB" * 32, "0x" + "ab" * 32),
    "keystore_password": ("correct horse", "correct horse"),
    "admin_token": (" op-token-123 ", "op-token-123"),
    "batch_trusted_cids": (
        "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB, ",
        frozenset({"bafybeiasb5vpmaounyilfuxbd3lryvosl4yefqrfahsb2esg46q6tu6y5q"}),
    ),
    "trusted_minters": (  # needs an RPC URL and a contract: see needs()
        f" {ADDRESS}, 0x52908400098527886E0F7030069857D2E4169EE7,",
        frozenset({ADDRESS.lower(), "0x52908400098527886e0f7030069857d2e4169ee7"}),
    ),
    "cors_origins": (
        "https://a.example, http://b.example:8080/",
        ("https://a.example", "http://b.example:8080"),
    ),
    "url_allow": ("127.0.0.1:8080, Images.Example", ("127.0.0.1:8080", "images.example")),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No setting from the environment of the test run."""
    legacy = {name for names in LEGACY.values() for name in names}
    for name in list(os.environ):
        if name.upper().startswith(PREFIX) or name.upper() in legacy:
            monkeypatch.delenv(name)


def _optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, annotation
        return args[0]
    return annotation


def _bounds(field: str) -> tuple[float, float]:
    low, high = 0.0, None
    for m in Settings.model_fields[field].metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low = m.gt + 1
        elif isinstance(m, annotated_types.Le):
            high = m.le
    return low, high if high is not None else low + 1_000_000


def sample(field: str, tmp_path: Path) -> tuple[str, Any]:
    """A valid environment value for ``field`` that differs from its default, and its value."""
    if field in SPECIAL:
        return SPECIAL[field]
    info = Settings.model_fields[field]
    default = getattr(Settings(), field)
    kind = _optional(info.annotation)
    if kind is bool:
        return ("false", False) if default else ("true", True)
    if kind is int or kind is float:
        low, high = _bounds(field)
        value = kind((low + high) // 2 if kind is int else (low + high) / 2)
        if value == default:
            value = kind(low)
        return str(value), value
    if kind is Path:
        if field == "keystore":
            (tmp_path / "keystore.json").write_text("{}")
            return str(tmp_path / "keystore.json"), tmp_path / "keystore.json"
        if field == "admin_token_file":
            (tmp_path / "admin-token").write_text("op-token-123\n")
            return str(tmp_path / "admin-token"), tmp_path / "admin-token"
        return str(tmp_path / field), tmp_path / field
    if typing.get_origin(kind) is Literal:
        choice = next(c for c in typing.get_args(kind) if c != default)
        return choice, choice
    if kind is str:
        return "sample.value", "sample.value"
    raise AssertionError(f"no sample value for {field}: {info.annotation} (add one to SPECIAL)")


def needs(field: str) -> dict[str, str]:
    """Other variables a field's value is only valid with."""
    if field == "trusted_minters":
        return {"CIDSERVE_CHAIN_RPC_URL": RPC, "CIDSERVE_LICENSE_CONTRACT": ADDRESS}
    return {"CIDSERVE_CHAIN_RPC_URL": RPC} if field == "license_contract" else {}


def plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_field_is_set_by_its_cidserve_variable(field, tmp_path, monkeypatch):
    text, expected = sample(field, tmp_path)
    default = getattr(Settings(), field)
    assert plain(default) != expected, "the sample must not be the default"
    for name, value in {PREFIX + field.upper(): text, **needs(field)}.items():
        monkeypatch.setenv(name, value)
    assert plain(getattr(load_settings(), field)) == expected
    # The python field name works too, and wins over the environment.
    assert plain(getattr(Settings(**{field: default}), field)) == plain(default)


def test_only_fields_with_a_legacy_name_have_an_explicit_alias():
    aliased = {}
    for field, info in Settings.model_fields.items():
        if info.validation_alias is not None:
            aliased[field] = tuple(info.validation_alias.choices)
    assert aliased == {f: (PREFIX + f.upper(), *names) for f, names in LEGACY.items()}


@pytest.mark.parametrize(("field", "name"), LEGACY_NAMES)
def test_legacy_name_sets_its_field(field, name, tmp_path, monkeypatch):
    text, expected = sample(field, tmp_path)
    for other, value in needs(field).items():
        monkeypatch.setenv(other, value)
    monkeypatch.setenv(name, text)
    assert plain(getattr(load_settings(), field)) == expected


@pytest.mark.parametrize(("field", "name"), LEGACY_NAMES)
def test_cidserve_name_wins_over_legacy_name(field, name, tmp_path, monkeypatch):
    text, expected = sample(field, tmp_path)
    other = {
        "port": "1234",
        "data_dir": str(tmp_path / "legacy"),
        "model_dir": str(tmp_path / "legacy"),
        "max_models_in_memory": "77",
        "inference_timeout_ms": "777",
        "log_level": "error",
        "chain_rpc_url": "http://legacy.example:9650",
        "license_contract": "0x52908400098527886E0F7030069857D2E4169EE7",
    }[field]
    for need, value in needs(field).items():
        monkeypatch.setenv(need, value)
    monkeypatch.setenv(name, other)
    monkeypatch.setenv(PREFIX + field.upper(), text)
    assert plain(getattr(load_settings(), field)) == expected


def test_original_chain_variables_turn_licensing_on(monkeypatch):
    monkeypatch.setenv("AVALANCHE_RPC_URL", RPC)
    monkeypatch.setenv("CONTRACT_ADDRESS", ADDRESS)
    settings = load_settings()
    assert settings.licensing_enabled
    assert (settings.chain_rpc_url, settings.license_contract) == (RPC, ADDRESS)
    monkeypatch.setenv("CONTRACT_ADDRESS", "0x1234")
    with pytest.raises(SettingsError, match=r"CONTRACT_ADDRESS|LICENSE_CONTRACT"):
        load_settings()


def test_inference_timeout_names_are_tried_in_order(monkeypatch):
    monkeypatch.setenv("INFERENCE_TIMEOUT", "11")
    assert load_settings().inference_timeout_ms == 11
    monkeypatch.setenv("CIDSERVE_INFERENCE_TIMEOUT", "12")
    assert load_settings().inference_timeout_ms == 12
    monkeypatch.setenv("CIDSERVE_INFERENCE_TIMEOUT_MS", "13")
    assert load_settings().inference_timeout_ms == 13
    assert load_settings(inference_timeout_ms=14).inference_timeout_ms == 14


def test_field_names_win_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CIDSERVE_PORT", "1111")
    monkeypatch.setenv("PORT", "2222")
    monkeypatch.setenv("CIDSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "env"))
    settings = Settings(port=3333, host="::1", data_dir=tmp_path / "kw")  # type: ignore[call-arg]
    assert (settings.port, settings.host, settings.data_dir) == (3333, "::1", tmp_path / "kw")
    assert load_settings(port=4444).port == 4444


def test_variable_names_are_case_insensitive(monkeypatch):
    monkeypatch.setenv("cidserve_max_top_k", "7")
    monkeypatch.setenv("log_level", "WARNING")
    settings = load_settings()
    assert (settings.max_top_k, settings.log_level) == (7, "warning")


def _bad(field: str) -> str | None:
    """A value of the wrong type for ``field``, or None where any string is valid."""
    kind = _optional(Settings.model_fields[field].annotation)
    if kind in (int, float):
        return "not-a-number"
    if kind is bool:
        return "maybe"
    if typing.get_origin(kind) is Literal:
        return "nonsense"
    if field == "private_key":
        return "0x" + "ab" * 31 + "zz"
    if field == "keystore":
        return "/nonexistent/keystore.json"
    if field in SPECIAL and field != "keystore_password":
        return "ftp://no host" if field.endswith("url") else "bad value!"
    return None


@pytest.mark.parametrize("field", [f for f in Settings.model_fields if _bad(f) is not None])
def test_a_bad_value_names_its_variable(field, monkeypatch):
    bad = _bad(field)
    assert bad is not None
    monkeypatch.setenv(PREFIX + field.upper(), bad)
    for name, value in needs(field).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting: {PREFIX}{field.upper()}"), message
    assert (bad not in message) == (field in SECRET_FIELDS), message


@pytest.mark.parametrize(("field", "name"), [(f, n) for f, n in LEGACY_NAMES if _bad(f)])
def test_a_bad_legacy_value_names_every_variable_of_its_field(field, name, monkeypatch):
    monkeypatch.setenv(name, str(_bad(field)))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert " / ".join((PREFIX + field.upper(), *LEGACY[field])) in str(info.value)


def test_a_bad_override_names_the_variable_and_hides_secrets():
    with pytest.raises(SettingsError, match=r"CIDSERVE_PORT / PORT='abc'"):
        load_settings(port="abc")
    with pytest.raises(SettingsError, match="CIDSERVE_REDIS_URL='<redacted>'") as info:
        load_settings(redis_url="http://user:hunter2@cache")
    assert "hunter2" not in str(info.value)


def test_several_bad_values_are_reported_together(monkeypatch):
    monkeypatch.setenv("PORT", "x")
    monkeypatch.setenv("CIDSERVE_BATCH_ENABLED", "maybe")
    monkeypatch.setenv("CIDSERVE_IPFS_FIND_TIMEOUT_S", "40")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).count("; ") == 2
    assert "CIDSERVE_IPFS_FIND_TIMEOUT_S='40': Value error, must be less than" in str(info.value)
