"""Fixtures for the deploy/ tests: real mnemod (tests/integration/helpers.py),
real HAProxy with deploy/haproxy.cfg, a throwaway certificate from openssl.

The programs these tests need (haproxy, openssl, promtool, mdb_copy) are
installed by `make deps-test` (the Makefile's TEST_PKGS). When one is
missing the tests that need it fail and say which package to install:
CI must not pass by skipping them.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from helpers import ROOT, servers  # noqa: E402

DEPLOY = os.path.join(ROOT, "deploy")
HAPROXY_CFG = os.path.join(DEPLOY, "haproxy.cfg")

# program -> the Debian package that has it
PACKAGES = {"haproxy": "haproxy", "openssl": "openssl",
            "promtool": "prometheus", "mdb_copy": "lmdb-utils"}


def tool(name):
    """Path of a required program; fails the test when it is missing.
    /usr/sbin is searched too: haproxy lives there and an ordinary user's
    PATH often lacks it."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if not found:
        pytest.fail(f"{name} is not installed: apt-get install "
                    f"{PACKAGES.get(name, name)} (make deps-test installs it)",
                    pytrace=False)
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cert():
    """A self-signed certificate for localhost / 127.0.0.1: (PEM with
    certificate and key for HAProxy, client SSL context trusting it)."""
    openssl = tool("openssl")
    d = tempfile.mkdtemp(prefix="mnemo-tls-")
    key, crt = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    pem = os.path.join(d, "mnemo.pem")
    with open(pem, "w") as out:
        for p in (crt, key):
            with open(p) as f:
                out.write(f.read())
    ctx = ssl.create_default_context(cafile=crt)
    yield pem, ctx
    shutil.rmtree(d, ignore_errors=True)


class Proxy:
    """One HAProxy running deploy/haproxy.cfg in the foreground."""

    def __init__(self, pem, backends, check_inter="100ms"):
        self.tmp = tempfile.mkdtemp(prefix="mnemo-haproxy-")
        self.port = free_port()
        self.metrics_port = free_port()
        self.stats_socket = os.path.join(self.tmp, "admin.sock")
        self.log_path = os.path.join(self.tmp, "haproxy.log")
        self.env = haproxy_env(pem, backends, self.stats_socket,
                               f"127.0.0.1:{self.port}",
                               f"127.0.0.1:{self.metrics_port}", check_inter)
        self.proc = None

    def start(self, timeout=10):
        # -db: foreground, no daemon; the log goes to stdout (see env).
        self.proc = subprocess.Popen(
            [tool("haproxy"), "-db", "-f", HAPROXY_CFG], env=self.env,
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited:\n" + self.log())
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                if os.path.exists(self.stats_socket):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("haproxy did not start:\n" + self.log())

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def admin(self, command):
        """One command on the runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats_socket)
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode()

    def servers(self):
        """{server name: row of "show stat"} for backend mnemod."""
        lines = self.admin("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "mnemod" and row["svname"] != "BACKEND":
                rows[row["svname"]] = row
        return rows

    def wait_status(self, server, prefix, timeout=10):
        """Wait until a server's status starts with prefix ("UP", "DOWN");
        returns its row."""
        deadline = time.time() + timeout
        while True:
            row = self.servers()[server]
            if row["status"].startswith(prefix):
                return row
            if time.time() > deadline:
                raise AssertionError(f"{server} is {row['status']} "
                                     f"({row['check_status']} "
                                     f"{row['check_code']}), not {prefix}")
            time.sleep(0.02)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def haproxy_env(pem, backends, stats_socket, bind, metrics_bind,
                check_inter="1s"):
    """The environment deploy/haproxy.cfg reads (its header lists it)."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("MNEMO_BACKEND_") or k.startswith("MNEMO_HAPROXY_"):
            del env[k]
    env.update(MNEMO_HAPROXY_CERT=pem, MNEMO_HAPROXY_STATS_SOCKET=stats_socket,
               MNEMO_HAPROXY_BIND=bind, MNEMO_HAPROXY_METRICS_BIND=metrics_bind,
               MNEMO_HAPROXY_CHECK_INTER=check_inter,
               MNEMO_HAPROXY_LOG="stdout")
    # As root HAProxy chroots and becomes user haproxy, as the service
    # does; an ordinary user cannot, and says so with this variable.
    if os.geteuid() != 0:
        env["MNEMO_HAPROXY_UNPRIVILEGED"] = "1"
    for i, b in enumerate(backends, 1):
        env[f"MNEMO_BACKEND_{i}"] = b
    return env


@pytest.fixture(scope="module")
def start_server():
    """start_server(config, args) -> a real mnemod, stopped at the end of
    the module."""
    with servers() as make:
        yield make


@pytest.fixture
def start_proxy(cert):
    """start_proxy([mnemod, ...], check_inter) -> a running Proxy."""
    started = []

    def make(servers, check_inter="100ms"):
        p = Proxy(cert[0], [f"127.0.0.1:{s.port}" for s in servers],
                  check_inter).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
