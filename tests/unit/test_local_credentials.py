"""The command line and StoreConfig.from_env find a local etcd's credentials the same way (from_options)."""

from __future__ import annotations

import pytest

import tasklease.etcd_server
from tasklease.cli import build_parser, resolve_environment, store_config
from tasklease.errors import InvalidOption
from tasklease.store import Store, StoreConfig


@pytest.fixture
def local_etcd(monkeypatch):
    asked: list[str] = []

    def find(endpoints: str) -> tuple[str, str] | None:
        asked.append(endpoints)
        return ("root", "/run/pw") if endpoints == "127.0.0.1:23790" else None

    monkeypatch.setattr(tasklease.etcd_server, "find_local_credentials", find)
    return asked


def cli(*argv: str) -> StoreConfig:
    return store_config(resolve_environment(build_parser().parse_args([*argv, "stats"]), environ={}))


def test_without_credentials_both_log_in_to_the_local_etcd(local_etcd):
    from_cli = cli("--etcd", "127.0.0.1:23790")
    from_env = StoreConfig.from_env({"TASKLEASE_ETCD": "127.0.0.1:23790"})
    assert from_cli == from_env
    assert (from_cli.user, from_cli.password_file) == ("root", "/run/pw")
    assert local_etcd == ["127.0.0.1:23790", "127.0.0.1:23790"]


def test_given_credentials_are_used_as_given(local_etcd):
    from_cli = cli("--etcd", "127.0.0.1:23790", "--etcd-user", "bob", "--etcd-password-file", "/pw")
    from_env = StoreConfig.from_env(
        {
            "TASKLEASE_ETCD": "127.0.0.1:23790",
            "TASKLEASE_ETCD_USER": "bob",
            "TASKLEASE_ETCD_PASSWORD_FILE": "/pw",
        }
    )
    assert from_cli == from_env
    assert (from_cli.user, from_cli.password_file) == ("bob", "/pw")
    assert local_etcd == []


def test_a_password_alone_is_not_completed_with_the_local_user(local_etcd):
    with pytest.raises(InvalidOption, match="etcd user and password go together"):
        cli("--etcd", "127.0.0.1:23790", "--etcd-password-file", "/pw")
    assert local_etcd == []


def test_another_etcd_has_no_local_credentials(local_etcd):
    config = StoreConfig.from_options("10.0.0.1:2379", timeout_s=2.0)
    assert (config.user, config.password_file, config.timeout_s) == (None, None, 2.0)


def test_a_store_given_no_config_connects_as_the_environment_says(local_etcd, monkeypatch):
    # (`SyncClient()` / `Client.connect()` against `tasklease dev`, which has auth on, were
    # refused with "user name is empty": the default config ignored the environment)
    monkeypatch.setenv("TASKLEASE_ETCD", "127.0.0.1:23790")
    for name in ("_USER", "_PASSWORD", "_PASSWORD_FILE", "_CA", "_CERT", "_KEY", "_TIMEOUT"):
        monkeypatch.delenv(f"TASKLEASE_ETCD{name}", raising=False)
    config = Store().config
    assert config == StoreConfig.from_env({"TASKLEASE_ETCD": "127.0.0.1:23790"})
    assert (config.endpoints, config.user, config.password_file) == (("127.0.0.1:23790",), "root", "/run/pw")
