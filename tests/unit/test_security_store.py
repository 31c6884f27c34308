"""Secrets and TLS names in StoreConfig; how the CLI finds a local etcd's password file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasklease.errors import InvalidOption
from tasklease.etcd_server import find_local_credentials, local_etcd_record
from tasklease.store import StoreConfig, read_password_file


@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\nsecond line\n", "s3cret"),
        (" spaces kept \n", " spaces kept "),
    ],
)
def test_the_password_is_the_first_line_without_its_line_break(tmp_path: Path, content: str, password: str):
    path = tmp_path / "pw"
    path.write_text(content, newline="")
    assert read_password_file(str(path)) == password


@pytest.mark.parametrize("content", ["", "\n", "\nsecond"])
def test_an_empty_password_file_is_refused(tmp_path: Path, content: str):
    path = tmp_path / "pw"
    path.write_text(content)
    with pytest.raises(InvalidOption, match="is empty"):
        read_password_file(str(path))


def test_a_missing_password_file_is_named(tmp_path: Path):
    with pytest.raises(InvalidOption, match=f"cannot read the etcd password file {tmp_path / 'nope'}"):
        read_password_file(str(tmp_path / "nope"))


def test_the_password_is_not_in_the_repr():
    config = StoreConfig(user="u", password="hunter2-secret")
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config)


def test_password_and_password_file_rules():
    assert StoreConfig(user="u", password_file="/f").password_file == "/f"
    with pytest.raises(InvalidOption, match="not both"):
        StoreConfig(user="u", password="p", password_file="/f")
    with pytest.raises(InvalidOption, match="go together"):
        StoreConfig(password_file="/f")
    with pytest.raises(InvalidOption, match="go together"):
        StoreConfig(user="u")


def test_tls_names():
    # one host name for all endpoints: that name is checked (never "localhost" unless given)
    assert StoreConfig.from_text("https://10.0.0.1:2379,https://10.0.0.1:2380").server_name == "10.0.0.1"
    assert StoreConfig.from_text("https://etcd.example:2379").server_name == "etcd.example"
    # different names: an explicit name is required
    with pytest.raises(InvalidOption, match="--etcd-tls-server-name"):
        StoreConfig.from_text("https://10.0.0.1:2379,https://10.0.0.2:2379")
    with pytest.raises(InvalidOption, match="--etcd-tls-server-name"):
        StoreConfig(endpoints=("a.example:2379", "b.example:2379"), ca_file="/ca.pem")
    named = StoreConfig.from_text(
        "https://10.0.0.1:2379,https://10.0.0.2:2379", tls_server_name="etcd.example"
    )
    assert named.server_name == "etcd.example"
    # plain HTTP: no name at all
    assert StoreConfig.from_text("http://10.0.0.1:2379,http://10.0.0.2:2379").server_name is None


def write_record(port: int, password_file: Path, pid: int) -> Path:
    path = local_etcd_record(port)
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "endpoint": f"http://127.0.0.1:{port}",
                "user": "root",
                "password_file": str(password_file),
                "pid": pid,
            }
        )
    )
    path.chmod(0o600)
    return path


def test_local_credentials_are_found_for_a_live_local_etcd_only(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    pw = tmp_path / "root-password"
    record = write_record(23790, pw, os.getpid())
    assert find_local_credentials("http://127.0.0.1:23790") == ("root", str(pw))
    assert find_local_credentials("localhost:23790") == ("root", str(pw))
    # not for another port, several endpoints, a remote host or TLS
    assert find_local_credentials("http://127.0.0.1:23791") is None
    assert find_local_credentials("127.0.0.1:23790,127.0.0.1:23790") is None
    assert find_local_credentials("http://10.0.0.1:23790") is None
    assert find_local_credentials("https://127.0.0.1:23790") is None
    # not from a record others may write
    record.chmod(0o622)
    assert find_local_credentials("http://127.0.0.1:23790") is None
    record.chmod(0o600)
    # not for an etcd that is gone
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    write_record(23790, pw, int(gone.stdout))
    assert find_local_credentials("http://127.0.0.1:23790") is None
