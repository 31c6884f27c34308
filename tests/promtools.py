"""Prometheus for the tests: find or install `prometheus` and `promtool`, run a server, query it.

The project installs what its tests need (STYLE.md, rule 23): when either
binary is missing, :func:`ensure_prometheus` installs Debian's ``prometheus``
package (2.42, which ships both) with apt-get, as ``bench/peers.py`` does for
redis-server. A file lock keeps two test runs from running apt at once. The
tests never skip for want of Prometheus: a failed install is a failure.

:class:`PrometheusServer` runs one server on 127.0.0.1 with a free port, its own
config and TSDB in a temp dir, and answers instant queries through the HTTP API.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEBIAN_PACKAGE = "prometheus"
DEBIAN_PORT = 9090  # where the package's own service would listen
BINARIES = ("prometheus", "promtool")
LOCK_PATH = Path("/tmp/tasklease-apt-prometheus.lock")
REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
EXAMPLE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "tasklease.json"
OBSERVABILITY_DOC = REPO / "docs" / "observability.md"


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: str
    promtool: str


def _which_all() -> PrometheusBinaries | None:
    found = [shutil.which(name) for name in BINARIES]
    if all(found):
        return PrometheusBinaries(prometheus=str(found[0]), promtool=str(found[1]))
    return None


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ensure_prometheus() -> PrometheusBinaries:
    """Paths of `prometheus` and `promtool`, installing Debian's package if either is missing.

    Should the package start its own service on 9090 (it does not where there is
    no init system and policy-rc.d denies starts), it is stopped again.

    Raises:
        RuntimeError: apt-get failed, or the binaries are still missing after it.
    """
    found = _which_all()
    if found:
        return found
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing right now
        found = _which_all()
        if found:
            return found
        busy_before = _listening(DEBIAN_PORT)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", DEBIAN_PACKAGE],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                )
        if not busy_before and _listening(DEBIAN_PORT):
            subprocess.run(["service", DEBIAN_PACKAGE, "stop"], check=False, capture_output=True)
    found = _which_all()
    if not found:
        raise RuntimeError(f"{' and '.join(BINARIES)} still missing after apt-get install {DEBIAN_PACKAGE}")
    return found


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` (installing it when missing); never raises on its exit code."""
    tool = ensure_prometheus().promtool
    return subprocess.run(
        [tool, *(str(a) for a in args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QueryError(AssertionError):
    """Prometheus refused a query (it did not parse, or its evaluation failed)."""


class PrometheusServer:
    """A `prometheus` process on 127.0.0.1:PORT with its own config, TSDB and log in ``workdir``.

    Args:
        workdir: A fresh directory (config, rule files, data, log).
        targets: ``{job: ["host:port", ...]}`` scraped every ``scrape_interval_s``.
        rule_files: Rule files copied into ``workdir`` and loaded (their alerts are evaluated).
        scrape_interval_s: Scrape and rule-evaluation interval.
    """

    def __init__(
        self,
        workdir: Path,
        targets: dict[str, list[str]],
        *,
        rule_files: tuple[Path, ...] = (),
        scrape_interval_s: float = 1.0,
    ) -> None:
        self.workdir = workdir
        self.targets = targets
        self.rule_files = rule_files
        self.scrape_interval_s = scrape_interval_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The generated prometheus.yml (JSON is YAML)."""
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        rules = []
        for i, path in enumerate(self.rule_files):
            copy = self.workdir / f"rules{i}-{path.name}"
            copy.write_text(path.read_text())
            rules.append(str(copy))
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": rules,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]}
                for job, addrs in self.targets.items()
            ],
        }
        return json.dumps(config, indent=2)

    def start(self, *, within_s: float = 60.0) -> None:
        """Start the server and wait until it is ready (``/-/ready``)."""
        binary = ensure_prometheus().prometheus
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        check = promtool("check", "config", config)
        if check.returncode != 0:
            raise RuntimeError(f"generated config rejected:\n{check.stdout}\n{check.stderr}")
        self.port = free_port()
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=info",
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + within_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"prometheus not ready within {within_s:g} s:\n{self.tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, lines: int = 30) -> str:
        if self._log:
            with contextlib.suppress(ValueError):
                self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET ``/api/v1/PATH``; the ``data`` field of a success, :class:`QueryError` otherwise."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution error
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a list of ``{"metric": {...}, "value": [t, "v"]}``."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The single value of an instant query (fails unless it has exactly one series)."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and close its log. Idempotent."""
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if self._log:
                self._log.close()
                self._log = None


# what deploy/ holds, read without a YAML library ---------------------------------------------
@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    annotations: frozenset[str]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def alert_rules(path: Path = ALERTS) -> dict[str, AlertRule]:
    """The alerting rules of ``path``, by name (a reader for the layout alerts.yml keeps).

    Each rule is ``- alert: NAME``, then ``expr: |`` with the expression on the
    lines below, ``for:``, ``labels: severity:`` and ``annotations:``.
    """
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- alert:")]
    rules: dict[str, AlertRule] = {}
    for n, start in enumerate(starts):
        block = lines[start : starts[n + 1] if n + 1 < len(starts) else len(lines)]
        name = block[0].split(":", 1)[1].strip()
        fields: dict[str, str] = {}
        annotations: set[str] = set()
        in_annotations = False
        for i, line in enumerate(block[1:], start=1):
            key, _, value = line.strip().partition(":")
            if key == "expr":
                taken = []
                for b in block[i + 1 :]:
                    if b.strip() and _indent(b) <= _indent(line):
                        break
                    taken.append(b.strip())
                fields["expr"] = value.strip() if value.strip() != "|" else " ".join(t for t in taken if t)
            elif key in ("for", "severity"):
                fields[key] = value.strip()
            elif key == "annotations":
                in_annotations = True
                annotations_indent = _indent(line)
            elif in_annotations and line.strip() and _indent(line) == annotations_indent + 2:
                annotations.add(key)
        rules[name] = AlertRule(
            name=name,
            expr=fields.get("expr", ""),
            for_=fields.get("for", ""),
            severity=fields.get("severity", ""),
            annotations=frozenset(annotations),
        )
    return rules


def alert_test_cases(path: Path = ALERT_TESTS) -> list[tuple[str, bool]]:
    """``(alertname, expected to fire)`` for every ``alert_rule_test`` entry of ``path``."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    cases = []
    for i, line in enumerate(lines):
        if line.startswith("alertname:"):
            name = line.split(":", 1)[1].strip()
            expected = next(x for x in lines[i + 1 :] if x.startswith("exp_alerts:"))
            cases.append((name, expected.split("#")[0].strip() != "exp_alerts: []"))
    return cases


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel but the rows (rows' nested panels too, should a row be collapsed)."""
    board = board if board is not None else dashboard()
    out = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(panel title + refId, expr)`` of every target of every panel."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in dashboard_panels(board)
        for target in panel["targets"]
    ]


def as_promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel's expression as Prometheus runs it: Grafana's variables replaced.

    ``$queue`` is "All" (``.*``), ``$__rate_interval`` is ``rate_interval``.
    """
    out = expr.replace("$__rate_interval", rate_interval).replace("$queue", ".*")
    assert "$" not in out, f"a Grafana variable this helper does not know: {expr}"
    return out


def doc_metrics(path: Path = OBSERVABILITY_DOC) -> dict[str, str]:
    """Metric name -> type, from the table of docs/observability.md ("Metrics").

    Its rows are ``| `name` | type | labels | ...``; other tables of the document (bucket
    bounds, say) do not match: one name in the first cell, a metric type in the second.
    """
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        name = re.fullmatch(r"`(tasklease_[a-z0-9_]+)`", cells[0])
        if name and cells[1] in METRIC_TYPES:
            out[name.group(1)] = cells[1]
    return out


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_TYPES = frozenset({"counter", "gauge", "histogram", "summary"})


def metric_names(text: str, known: dict[str, str]) -> set[str]:
    """The metric families ``text`` names (a histogram's ``_bucket`` etc. map to its name)."""
    names = set()
    for token in re.findall(r"\btasklease_[a-z0-9_]+", text):
        name = token
        if name not in known:
            for suffix in HISTOGRAM_SUFFIXES:
                base = token.removesuffix(suffix)
                if base != token and known.get(base) == "histogram":
                    name = base
                    break
        names.add(name)
    return names


if __name__ == "__main__":
    # bootstrap.py's test job runs this before pytest, so no test spends its timeout on apt-get.
    found = ensure_prometheus()
    version = subprocess.run([found.promtool, "--version"], capture_output=True, text=True).stdout
    print(f"prometheus: {found.prometheus}, promtool: {found.promtool} ({version.splitlines()[0]})")
