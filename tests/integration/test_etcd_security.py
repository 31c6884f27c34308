"""The whole system against an etcd with auth enabled and mutual TLS on the client port.

The module starts its own etcd (the session one speaks plain HTTP without
auth): certificates come from a CA made here with ``cryptography``; etcd
requires a client certificate signed by it (``--client-cert-auth``); then
auth is enabled with a ``tasklease`` user whose role may read and write the
``/``-prefixed keys only (every tasklease namespace lives there).

The client certificate's CN is deliberately not an etcd user: with
``--client-cert-auth`` etcd takes a certificate's CN as the user name of
requests that carry no token, which would hide a broken password login.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

import orjson
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption, StoreAuthError, StoreError, StoreUnavailable
from tasklease.etcd_server import EtcdServer, free_port
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Get, Put, Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig

USER = "tasklease"
# throw-away passwords of a throw-away etcd
PASSWORD = "s3cret-pw"
ROOT_PASSWORD = "r00t-pw"
READER = "reader"  # may read the same keys, not write them
READER_PASSWORD = "r3ader-pw"
CLIENT_CN = "tasklease-client"  # not an etcd user: see the module docstring
REQUEST_TIMEOUT_S = 3.0


# certificates ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def make_pki(directory: Path, server_names: list[x509.GeneralName] | None = None) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost (or ``server_names``) and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tasklease test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usages: list[x509.ObjectIdentifier], san: list[x509.GeneralName] | None):
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # etcd also dials itself (grpc-gateway) with its server certificate: allow client auth too.
    server_cert, server_key = leaf(
        "127.0.0.1",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        server_names or [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_cert, client_key = leaf(CLIENT_CN, [ExtendedKeyUsageOID.CLIENT_AUTH], None)

    _write(directory / "ca.pem", ca_cert)
    _write(directory / "server.pem", server_cert, server_key)
    _write(directory / "client.pem", client_cert, client_key)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


# the secured etcd ------------------------------------------------------------------------
@dataclass(frozen=True)
class SecureEtcd:
    server: EtcdServer
    pki: Pki

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.client_port}"

    def config(self, **overrides: Any) -> StoreConfig:
        """A store config with the right password and the full client TLS set."""
        base = StoreConfig(
            endpoints=(self.address,),
            timeout_s=REQUEST_TIMEOUT_S,
            user=USER,
            password=PASSWORD,
            ca_file=str(self.pki.ca),
            cert_file=str(self.pki.client_cert),
            key_file=str(self.pki.client_key),
        )
        return replace(base, **overrides)

    def env(self, namespace: str, **overrides: str) -> dict[str, str]:
        """The CLI environment: everything through TASKLEASE_* variables."""
        # GRPC_*: Store.connect sets GRPC_VERBOSITY in this process; the CLI must do it itself
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLEASE_", "GRPC_"))}
        env.update(
            TASKLEASE_ETCD=self.server.endpoint,
            TASKLEASE_NAMESPACE=namespace,
            TASKLEASE_ETCD_TIMEOUT=str(REQUEST_TIMEOUT_S),
            TASKLEASE_ETCD_USER=USER,
            TASKLEASE_ETCD_PASSWORD=PASSWORD,
            TASKLEASE_ETCD_CA=str(self.pki.ca),
            TASKLEASE_ETCD_CERT=str(self.pki.client_cert),
            TASKLEASE_ETCD_KEY=str(self.pki.client_key),
        )
        env.update(overrides)
        return env


async def enable_auth(address: str, pki: Pki) -> None:
    """Users root and tasklease, a prefix role for tasklease, then auth enable (etcd3aio directly)."""
    import etcd3aio
    from etcd3aio.auth import PermissionType

    client = etcd3aio.Etcd3Client(
        [address],
        ca_cert=pki.ca.read_bytes(),
        cert_chain=pki.client_cert.read_bytes(),
        cert_key=pki.client_key.read_bytes(),
    )
    await client.connect()
    try:
        auth = cast(Any, client.auth)  # the etcd3aio AuthService (None only before connect)
        t = 10.0
        await auth.user_add("root", ROOT_PASSWORD, timeout=t)
        await auth.role_add("root", timeout=t)
        await auth.user_grant_role("root", "root", timeout=t)
        await auth.role_add(USER, timeout=t)
        # every tasklease key is /<namespace>/...: grant the range ["/", "0") ("0" is "/" + 1)
        await auth.role_grant_permission(USER, "/", "0", perm_type=PermissionType.READWRITE, timeout=t)
        await auth.user_add(USER, PASSWORD, timeout=t)
        await auth.user_grant_role(USER, USER, timeout=t)
        await auth.role_add(READER, timeout=t)
        await auth.role_grant_permission(READER, "/", "0", perm_type=PermissionType.READ, timeout=t)
        await auth.user_add(READER, READER_PASSWORD, timeout=t)
        await auth.user_grant_role(READER, READER, timeout=t)
        await auth.auth_enable(timeout=t)
        # from now on every request needs a token (or a certificate CN that is a user)
        client.set_token((await auth.authenticate("root", ROOT_PASSWORD, timeout=t)).token)
        assert (await auth.auth_status(timeout=t)).enabled
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureEtcd]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    server = EtcdServer(
        data_dir=tmp_path_factory.mktemp("secure-etcd") / "data",
        scheme="https",
        extra_args=(
            "--cert-file", str(pki.server_cert),
            "--key-file", str(pki.server_key),
            "--trusted-ca-file", str(pki.ca),
            "--client-cert-auth",
        ),
    )  # fmt: skip
    try:
        await asyncio.to_thread(server.start, timeout_s=30.0)
        await asyncio.wait_for(enable_auth(f"127.0.0.1:{server.client_port}", pki), 30)
        yield SecureEtcd(server, pki)
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
def keys(namespace: str) -> Keyspace:
    return Keyspace(namespace)


# 1. the Python API end to end ------------------------------------------------------------
async def test_client_scheduler_and_worker_run_tasks_over_tls_with_auth(
    secure_etcd: SecureEtcd, keys: Keyspace
) -> None:
    stores: list[Store] = []
    scheduler: Scheduler | None = None
    worker: Worker | None = None

    async def connect() -> Store:
        store = Store(secure_etcd.config())
        await store.connect()
        stores.append(store)
        return store

    try:
        client = Client(await connect(), keys)
        scheduler = Scheduler(await connect(), keys, SchedulerConfig(scheduler_id="s0", lease_ttl_s=3))
        await scheduler.start()
        worker = Worker(
            await connect(),
            keys,
            builtin_registry(),
            WorkerConfig(worker_id="w0", lease_ttl_s=3, heartbeat_s=0.5, grace_s=1.0),
        )
        await worker.start()

        batch = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(5))
        finals = await asyncio.gather(*(client.wait(t.id, timeout_s=30) for t in batch.tasks))
        assert [f.state for f in finals] == [TaskState.SUCCEEDED] * 5
        assert [f.result for f in finals] == [{"i": i} for i in range(5)]
        assert {f.attempts[0].worker for f in finals} == {"w0"}
        assert scheduler.leading.is_set()
    finally:
        if worker is not None:
            await worker.stop()
        if scheduler is not None:
            await scheduler.stop()
        for store in stores:
            await store.close()


# 2. the CLI, configured by environment variables only ------------------------------------
async def run_cli(
    bin_: str, env: dict[str, str], *args: str, within_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [bin_, *args], env=env, capture_output=True, text=True, timeout=within_s
    )


async def test_cli_submit_and_status_with_env_only(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str
) -> None:
    env = secure_etcd.env(namespace)
    out = await run_cli(tasklease_bin, env, "submit", "noop", "--payload", '{"x": 1}', "--json")
    assert out.returncode == 0, out.stderr
    task_id = orjson.loads(out.stdout)["id"]

    out = await run_cli(tasklease_bin, env, "status", task_id, "--json")
    assert out.returncode == 0, out.stderr
    record = orjson.loads(out.stdout)
    assert record["id"] == task_id
    assert record["type"] == "noop"
    assert record["state"] == "queued"  # no worker in this namespace
    assert record["payload"] == {"x": 1}

    # and the record really is in the secured etcd
    async with Store(secure_etcd.config()) as store:
        kv, _ = await store.get(Keyspace(namespace).task(task_id))
    assert kv is not None


# 3. a wrong password --------------------------------------------------------------------
async def test_wrong_password_is_refused_by_the_api(secure_etcd: SecureEtcd) -> None:
    store = Store(secure_etcd.config(password="wrong"))
    started = time.monotonic()
    with pytest.raises(StoreAuthError) as caught:
        await store.connect()
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2
    message = str(caught.value)
    assert "authenticat" in message.lower(), message
    assert "password" in message.lower(), message
    await store.close()  # a no-op after a failed connect, but must not raise

    # an unknown user is refused the same way
    with pytest.raises(StoreAuthError):
        await Client.connect(secure_etcd.config(user="nobody"))


async def test_wrong_password_is_one_line_on_stderr_and_exit_1(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str
) -> None:
    env = secure_etcd.env(namespace, TASKLEASE_ETCD_PASSWORD="wrong")
    out = await run_cli(tasklease_bin, env, "submit", "noop", "--json")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tasklease: error:"), out.stderr
    assert "authenticat" in lines[0].lower(), out.stderr
    assert "Traceback" not in out.stderr


async def test_token_less_requests_are_refused(secure_etcd: SecureEtcd) -> None:
    # A valid client certificate but no user: etcd must not let the request through.
    async with Store(secure_etcd.config(user=None, password=None)) as store:
        with pytest.raises(StoreAuthError, match="permission denied"):
            await store.get("/anything")


async def test_a_user_who_may_only_read_reads_many_keys_at_once(
    secure_etcd: SecureEtcd, namespace: str
) -> None:
    # (against etcd 3.5.0-3.5.4 such a read goes through etcd's log, as a transaction with
    # a put that never runs: a reader who may not write reads them as ranges instead)
    keys = [f"/{namespace}/read-only/{i}" for i in range(6)]
    async with Store(secure_etcd.config()) as writer:
        await writer.txn([], [Put(k, b"value %d" % i) for i, k in enumerate(keys)])
    async with Store(secure_etcd.config(user=READER, password=READER_PASSWORD)) as reader:
        for _ in range(2):
            result = await reader.txn([], [Get(k) for k in keys])
            assert [r[0].value for r in result.reads] == [b"value %d" % i for i in range(6)]
            assert all(r[0].mod_revision <= result.revision for r in result.reads)
        with pytest.raises(StoreAuthError, match="permission denied"):
            await reader.put(keys[0], b"overwritten")
        assert (await reader.get(keys[0])) is not None


# 4. no client certificate ---------------------------------------------------------------
async def test_missing_client_certificate_is_refused_quickly(secure_etcd: SecureEtcd) -> None:
    config = secure_etcd.config(cert_file=None, key_file=None)
    assert config.timeout_s == REQUEST_TIMEOUT_S
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await Client.connect(config)
    elapsed = time.monotonic() - started
    assert elapsed < REQUEST_TIMEOUT_S + 2, elapsed
    message = str(caught.value)
    assert secure_etcd.address in message, message
    assert "TLS handshake failed" in message, message
    assert "client certificate" in message, message

    # without a user the first request is the one that fails, just as quickly
    store = Store(replace(config, user=None, password=None))
    await store.connect()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="TLS handshake failed") as caught_get:
            await store.get("/anything")
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2
        assert secure_etcd.address in str(caught_get.value)
    finally:
        await store.close()


async def test_missing_client_certificate_cli_is_one_line(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str
) -> None:
    env = secure_etcd.env(namespace)
    del env["TASKLEASE_ETCD_CERT"], env["TASKLEASE_ETCD_KEY"]
    started = time.monotonic()
    out = await run_cli(tasklease_bin, env, "list", "--json")
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 10
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr  # no gRPC core log line before it
    assert lines[0].startswith("tasklease: error:"), out.stderr
    assert "TLS handshake failed" in lines[0], out.stderr


# 5. a worker process --------------------------------------------------------------------
@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def worker_process(
    secure_etcd: SecureEtcd, namespace: str, tmp_path: Path, tasklease_bin: str
) -> Iterator[WorkerProcess]:
    argv = [tasklease_bin, "worker", "--id", "secure-w", "--lease-ttl", "3", "--heartbeat", "0.5"]
    argv += ["--grace", "1", "--log-format", "text"]
    log_path = tmp_path / "worker.log"
    log_file = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            argv,
            env={**secure_etcd.env(namespace), "TASKLEASE_LOG_LEVEL": "info"},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    except BaseException:
        log_file.close()
        raise
    try:
        yield WorkerProcess(proc, log_path, log_file)
    finally:
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        finally:
            log_file.close()


async def test_worker_process_registers_against_the_secured_etcd(
    secure_etcd: SecureEtcd, namespace: str, worker_process: WorkerProcess
) -> None:
    keys = Keyspace(namespace)
    async with Store(secure_etcd.config()) as store:
        node = None
        deadline = time.monotonic() + 20
        while node is None:
            assert worker_process.proc.poll() is None, (
                f"worker exited with {worker_process.proc.returncode}:\n{worker_process.tail()}"
            )
            assert time.monotonic() < deadline, f"no node record after 20 s:\n{worker_process.tail()}"
            kv, _ = await store.get(keys.node("secure-w"))
            if kv is not None:
                node = codec.decode_obj(kv.key, kv.value)
            else:
                await asyncio.sleep(0.1)
        assert node["id"] == "secure-w"
        assert node["pid"] == worker_process.proc.pid

        # it also runs work that a scheduler (in this process) assigns over the secured etcd
        scheduler = Scheduler(store, keys, SchedulerConfig(scheduler_id="secure-s", lease_ttl_s=3))
        await scheduler.start()
        try:
            client = Client(store, keys)
            task = await client.submit("noop", "over tls")
            final = await client.wait(task.id, timeout_s=20)
        finally:
            await scheduler.stop()
        assert final.state is TaskState.SUCCEEDED, worker_process.tail()
        assert final.result == "over tls"
        assert final.attempts[0].worker == "secure-w"

        # SIGTERM: a clean stop that removes the node record
        worker_process.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker_process.proc.wait, 15)
        assert code == 0, worker_process.tail()
        assert (await store.get(keys.node("secure-w")))[0] is None


# 6. secrets: the password from a file, never on a command line ------------------------
@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "etcd-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


async def test_a_worker_with_a_password_file_shows_no_password_in_ps(
    secure_etcd: SecureEtcd, namespace: str, tmp_path: Path, tasklease_bin: str, password_file: Path
) -> None:
    env = secure_etcd.env(namespace, TASKLEASE_LOG_LEVEL="info")
    del env["TASKLEASE_ETCD_PASSWORD"]
    argv = [tasklease_bin, "worker", "--id", "file-w", "--lease-ttl", "3", "--heartbeat", "0.5"]
    argv += ["--grace", "1", "--log-format", "text", "--etcd-password-file", str(password_file)]
    log_path = tmp_path / "worker.log"
    keys = Keyspace(namespace)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            async with Store(secure_etcd.config()) as store:
                deadline = time.monotonic() + 20
                while (await store.get(keys.node("file-w")))[0] is None:
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    await asyncio.sleep(0.1)
            # registered over auth: and neither ps nor /proc/PID/environ shows the password
            process = psutil.Process(proc.pid)
            assert not any(PASSWORD in arg for arg in process.cmdline()), process.cmdline()
            assert str(password_file) in process.cmdline()
            assert PASSWORD not in "\n".join(f"{k}={v}" for k, v in process.environ().items())
            assert PASSWORD.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
    assert code == 0, log_path.read_text()
    assert "visible to every local user" not in log_path.read_text()  # no warning: no password flag


async def test_the_password_file_variable_works_and_the_flag_warns(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str, password_file: Path
) -> None:
    env = secure_etcd.env(namespace)
    del env["TASKLEASE_ETCD_PASSWORD"]
    out = await run_cli(
        tasklease_bin, dict(env, TASKLEASE_ETCD_PASSWORD_FILE=str(password_file)), "list", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""

    # the plain flag still works, with one warning line
    out = await run_cli(tasklease_bin, env, "--etcd-password", PASSWORD, "list", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tasklease: warning:") and "ps" in lines[0], out.stderr
    assert "--etcd-password-file" in lines[0]


@pytest.mark.parametrize(
    ("extra_env", "args", "message"),
    [
        ({}, ["--etcd-password", PASSWORD, "--etcd-password-file", "/nonexistent"], "not both"),
        ({"TASKLEASE_ETCD_PASSWORD_FILE": "/nonexistent"}, [], "both set"),
        (
            {},
            ["--etcd-password-file", "/nonexistent/pw"],
            "cannot read the etcd password file /nonexistent/pw",
        ),
    ],
)
async def test_password_file_mistakes_are_one_line_and_exit_2(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str, extra_env, args, message
) -> None:
    env = dict(secure_etcd.env(namespace), **extra_env)
    if args:
        del env["TASKLEASE_ETCD_PASSWORD"]
    out = await run_cli(tasklease_bin, env, *args, "list")
    assert out.returncode == 2, (out.stdout, out.stderr)
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("tasklease: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], out.stderr
    assert PASSWORD not in error_lines[0]


# 7. TLS: each member checked against the name it is dialled by, never "localhost" --------
async def test_tls_endpoints_with_different_names_need_a_server_name(secure_etcd: SecureEtcd) -> None:
    port = secure_etcd.server.client_port
    endpoints = (secure_etcd.address, f"localhost:{port}")
    with pytest.raises(InvalidOption, match="--etcd-tls-server-name"):
        secure_etcd.config(endpoints=endpoints)
    # named explicitly (a name every member's certificate carries): it works
    async with Store(secure_etcd.config(endpoints=endpoints, tls_server_name="localhost")) as store:
        await store.get("/anything")


async def test_tls_endpoints_named_alike_are_checked_against_that_name(
    secure_etcd: SecureEtcd, namespace: str, tasklease_bin: str
) -> None:
    # Two endpoints at 127.0.0.1 (members on one host): every certificate must name 127.0.0.1
    async with Store(secure_etcd.config(endpoints=(secure_etcd.address, secure_etcd.address))) as store:
        await store.get("/anything")
    # and the CLI says the same
    env = secure_etcd.env(namespace)
    env["TASKLEASE_ETCD"] = (
        f"https://{secure_etcd.address},https://localhost:{secure_etcd.server.client_port}"
    )
    out = await run_cli(tasklease_bin, env, "list")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "--etcd-tls-server-name" in out.stderr
    out = await run_cli(
        tasklease_bin, dict(env, TASKLEASE_ETCD_TLS_SERVER_NAME="localhost"), "list", "--json"
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def localhost_only_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Pki, int]]:
    """A TLS etcd whose certificate names only "localhost" (not 127.0.0.1), on two client ports."""
    pki = make_pki(tmp_path_factory.mktemp("pki-localhost"), [x509.DNSName("localhost")])
    second = free_port()
    server = EtcdServer(
        data_dir=tmp_path_factory.mktemp("localhost-etcd") / "data",
        scheme="https",
        extra_args=("--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key)),
    )
    urls = f"https://127.0.0.1:{server.client_port},https://127.0.0.1:{second}"
    server.extra_args = (*server.extra_args, "--listen-client-urls", urls)
    server.start(timeout_s=30.0)
    try:
        yield server, pki, second
    finally:
        server.stop()


async def test_a_certificate_for_localhost_does_not_pass_for_an_address(
    localhost_only_etcd: tuple[EtcdServer, Pki, int],
) -> None:
    server, pki, second = localhost_only_etcd
    first = server.client_port

    def config(endpoints: str, **kw: object) -> StoreConfig:
        return StoreConfig.from_text(endpoints, ca_file=str(pki.ca), timeout_s=REQUEST_TIMEOUT_S, **kw)

    # Several endpoints at 127.0.0.1: the certificate must name 127.0.0.1; "localhost" is not enough
    # (it used to be checked against "localhost" for every member whatever the endpoints said).
    for endpoints in (f"https://127.0.0.1:{first},https://127.0.0.1:{second}", f"https://127.0.0.1:{first}"):
        async with Store(config(endpoints)) as store:
            with pytest.raises(StoreUnavailable) as caught:
                await store.get("/anything")
        # the name check failed (gRPC's words, or store_h2's: Python's ssl module)
        cause = str(caught.value.__cause__)
        assert "Hostname Verification Check failed" in cause or "IP address mismatch" in cause, cause
    # the name the endpoints give is the name checked: "localhost" passes (at each port)
    for endpoints in (f"https://localhost:{first}", f"https://localhost:{second}"):
        async with Store(config(endpoints)) as store:
            await store.get("/anything")
    async with Store(config(f"https://localhost:{first},https://localhost:{second}")) as store:
        await store.get("/anything")
    # and so does an explicit server name
    endpoints = f"https://127.0.0.1:{first},https://127.0.0.1:{second}"
    async with Store(config(endpoints, tls_server_name="localhost")) as store:
        await store.get("/anything")
