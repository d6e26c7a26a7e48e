"""mnemod's command line: --help, --version, bad flags and configs exit 2
naming the key, precedence defaults < file < MNEMO_* environment < flags,
JSON-lines logs, and the data directory created when missing."""
import asyncio
import json
import os
import subprocess

import pytest

from helpers import MNEMOD, Server, call, connect


def run(args, env=None, timeout=20):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([MNEMOD] + args, capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_help_lists_every_flag():
    r = run(["--help"])
    assert r.returncode == 0
    for flag in ("--config", "--port", "--host", "--data-dir", "--device",
                 "--log-level", "--workers", "--help", "--version"):
        assert flag in r.stdout, flag


def header_keys():
    """The dotted keys include/mnemo/config.h documents, read from its text."""
    import re
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "include", "mnemo", "config.h")) as f:
        text = f.read()
    return sorted(set(re.findall(
        r"(?<![\w.])((?:gpu|processing|server|storage)\.[a-z0-9_]+)", text)))


def test_help_config_lists_every_key():
    assert "--help-config" in run(["--help"]).stdout
    r = run(["--help-config"])
    assert r.returncode == 0
    keys = header_keys()
    assert len(keys) >= 30
    for key in keys:
        env = "MNEMO_" + key.upper().replace(".", "_")
        block = r.stdout.split("\n" + key + " (", 1)
        assert len(block) == 2, key
        entry = block[1].split("\n\n", 1)[0]
        assert "default " in entry.splitlines()[0], key
        assert "env:     " + env in entry, key
        assert "allowed: " in entry, key
    # Exactly those keys, no others.
    assert r.stdout.count("\n    env:     MNEMO_") == len(keys)


def test_version():
    r = run(["--version"])
    assert r.returncode == 0
    assert r.stdout.startswith("mnemod ")


@pytest.mark.parametrize("args,key", [
    (["--port", "abc"], "server.port"),
    (["--port", "70000"], "server.port"),
    (["--device", "gpu"], "gpu.device"),
    (["--log-level", "loud"], "server.log_level"),
    (["--workers", "-1"], "processing.workers"),
])
def test_bad_flags_exit_2_naming_the_key(tmp_path, args, key):
    r = run(args + ["--data-dir", str(tmp_path / "d")])
    assert r.returncode == 2
    assert key in r.stderr


def test_unknown_flag_exits_2():
    r = run(["--frobnicate"])
    assert r.returncode == 2
    assert "--frobnicate" in r.stderr


def test_bad_config_file_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"server": {"prot": 1}}))
    r = run(["--config", str(cfg)])
    assert r.returncode == 2
    assert "server.prot" in r.stderr and "server.port" in r.stderr
    assert r.stderr.count(str(cfg)) == 1  # the file, named once
    cfg.write_text("{not json")
    r = run(["--config", str(cfg)])
    assert r.returncode == 2
    assert r.stderr.count(str(cfg)) == 1 and "not valid JSON" in r.stderr
    r = run(["--config", str(tmp_path / "missing.json")])
    assert r.returncode == 2
    assert "missing.json" in r.stderr and "No such file" in r.stderr


def test_bad_environment_exits_2_naming_the_variable():
    r = run([], env={"MNEMO_SERVER_PORT": "xyz"})
    assert r.returncode == 2
    assert "MNEMO_SERVER_PORT" in r.stderr


def test_precedence_file_env_flags_and_json_logs(tmp_path):
    # The file says rate_limit 5; the environment raises it to 7; flags
    # pick the worker count and the log level. Each setting is observed
    # through the server's behaviour or its log.
    data = tmp_path / "nested" / "data"
    srv = Server({"server": {"rate_limit": 5}},
                 args=["--workers", "1", "--log-level", "debug"],
                 data_dir=str(data),
                 env={"MNEMO_SERVER_RATE_LIMIT": "7"}).start()
    try:
        assert data.is_dir()  # created, parents included

        async def go():
            async with connect(srv.url) as ws:
                codes = []
                for i in range(9):
                    r = await call(ws, "health", rid=i)
                    codes.append(r["error"]["code"] if "error" in r else 0)
                return codes

        codes = asyncio.run(go())
        assert codes == [0] * 7 + [-32003] * 2
        logs = srv.log_json()
        assert logs, "no JSON log lines"
        for rec in logs:
            assert {"ts", "level", "module", "msg"} <= set(rec)
        # Every stderr line is a JSON object.
        assert len(logs) == len([l for l in srv.log if l.strip()])
        assert any("1 worker" in rec["msg"] for rec in logs)
        assert any(rec["level"] == "debug" for rec in logs)
    finally:
        assert srv.stop() == 0
        srv.cleanup()
