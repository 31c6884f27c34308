"""etcd authentication of a local etcd: turned on at its first start, checked at later ones.

Owns :class:`RootAuth`, which :meth:`tasklease.etcd_server.EtcdServer.start`
uses with ``auth=True``: through etcd's JSON gateway (``/v3/...``, plain HTTP
on loopback) it creates the ``root`` user and role, enables auth, refuses an
etcd that someone changed before auth was on and empties a fresh one; on
later starts it checks that the password opens the root user. No etcd client
here (the JSON gateway needs none).

Imports: :mod:`tasklease.errors`.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tasklease.errors import EtcdStartError

ROOT_USER = "root"


class RootAuth:
    """Authentication of one local etcd, with ``root`` as its only user.

    Args:
        endpoint: The etcd's client URL (plain HTTP).
        data_dir: Its data directory (named in errors).
        password_file: The root password's file (named in errors).
        members: How many members its cluster must have.
    """

    def __init__(self, endpoint: str, data_dir: Path, password_file: Path | None, members: int) -> None:
        self.endpoint = endpoint
        self.data_dir = data_dir
        self.password_file = password_file
        self.members = members

    def _gateway(self, call: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """One request to etcd's JSON gateway (``/v3/...``); an error answer is returned, not raised."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        request = urllib.request.Request(
            f"{self.endpoint}/v3/{call}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10.0) as resp:
                answer = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read() or b"{}")
            except ValueError:
                answer = {"error": f"HTTP {exc.code}"}
        except (OSError, ValueError) as exc:
            raise EtcdStartError(f"etcd at {self.endpoint} did not answer {call}: {exc}") from None
        return answer if isinstance(answer, dict) else {"error": "not a JSON object"}

    def _checked(
        self, call: str, body: dict[str, Any], token: str | None = None, ok: str = ""
    ) -> dict[str, Any]:
        answer = self._gateway(call, body, token)
        message = str(answer.get("message") or answer.get("error") or "")
        if message and not (ok and ok in message):
            raise EtcdStartError(f"cannot set up etcd auth in {self.data_dir} ({call}): {message}")
        return answer

    def set_up(self, password: str, fresh: bool) -> None:
        """Enable auth with ``root`` and ``password`` unless it is on; check the password opens it."""
        answer = self._gateway("auth/authenticate", {"name": ROOT_USER, "password": password})
        if answer.get("token"):
            return
        message = str(answer.get("message") or answer.get("error") or "")
        if "authentication failed" in message:
            raise EtcdStartError(
                f"the etcd in {self.data_dir} has auth on, and the password in {self.password_file} "
                "does not open its root user (restore the file, or start from an empty data directory)"
            )
        if "not enabled" not in message:
            raise EtcdStartError(f"cannot set up etcd auth in {self.data_dir}: {message}")
        # First start (or a data directory from before auth): root user and role, then enable.
        answer = self._checked(
            "auth/user/add", {"name": ROOT_USER, "password": password}, ok="already exists"
        )
        if answer.get("message") or answer.get("error"):
            self._checked("auth/user/changepw", {"name": ROOT_USER, "password": password})
        self._checked("auth/role/add", {"name": ROOT_USER}, ok="already exists")
        self._checked("auth/user/grant", {"user": ROOT_USER, "role": ROOT_USER})
        self._checked("auth/enable", {})
        token = str(self._checked("auth/authenticate", {"name": ROOT_USER, "password": password})["token"])
        self._check_untouched(token, fresh)

    def _check_untouched(self, token: str, fresh: bool) -> None:
        """Refuse an etcd that someone changed before auth was on; empty a fresh one.

        Until ``auth/enable`` anyone on this machine could reach the new etcd:
        a user or role added then would keep its rights. Keys written then into a
        fresh data directory are deleted.
        """
        users = self._checked("auth/user/list", {}, token).get("users", [])
        roles = self._checked("auth/role/list", {}, token).get("roles", [])
        granted = self._checked("auth/user/get", {"name": ROOT_USER}, token).get("roles", [])
        members = self._checked("cluster/member/list", {}, token).get("members", [])
        if users != [ROOT_USER] or roles != [ROOT_USER] or granted != [ROOT_USER]:
            raise EtcdStartError(
                f"the etcd in {self.data_dir} has users {users} and roles {roles} besides root "
                "(created before auth was on?): not starting it; inspect it, or remove the data directory"
            )
        if len(members) != self.members:
            raise EtcdStartError(
                f"the etcd in {self.data_dir} has {len(members)} members, expected {self.members}"
            )
        if fresh:
            everything = base64.b64encode(b"\0").decode()
            self._checked("kv/deleterange", {"key": everything, "range_end": everything}, token)
