"""The deployment engine: the same ServerApp/ClientApp on real Flower infrastructure.

``flwr run`` packs the project (``pyproject.toml`` names ``fedsim.app:server_app`` and
``fedsim.app:client_app``) and submits it to a SuperLink; the apps compose the very same Hydra
config from the run config's ``overrides`` string and the ServerApp writes ``metrics.csv`` into
``outdir``. :class:`LocalFederation` starts a SuperLink and SuperNodes on 127.0.0.1 (for a local
deployment and for tests) and stops every process it started by PID.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsim.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # SuperLink and SuperNodes start `flower-superexec` through PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, each in its own session.

    ``pids`` lists the processes started; :meth:`stop` sends SIGTERM to each one's process
    group (their ``flower-superexec``/``flwr-*app`` children included), then SIGKILL.
    """

    def __init__(self, num_nodes: int, port: int, supernode_port: int, logdir: Path) -> None:
        self.num_nodes = num_nodes
        self.port = port
        self.supernode_port = supernode_port
        self.logdir = Path(logdir)
        self.home = Path(tempfile.mkdtemp(prefix="fedsim-flwr-home-"))
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _spawn(self, args: list[str], log_name: str) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = (self.logdir / log_name).open("w")
        self._logs.append(log)
        self.procs.append(
            subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(self.home),
                start_new_session=True,
                cwd=self.logdir,
            )
        )

    def start(self, timeout: float = 60.0) -> LocalFederation:
        for port in [self.port] + [self.supernode_port + i for i in range(self.num_nodes)]:
            if _wait_port(port, 0):
                raise ConfigError(
                    f"port {port} on 127.0.0.1 is in use; choose another "
                    "engine.port / engine.supernode_port"
                )
        self._spawn(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        if not _wait_port(self.port, timeout):
            self.stop()
            raise RuntimeError(
                f"the SuperLink did not open port {self.port}; see {self.logdir / 'superlink.log'}"
            )
        for i in range(self.num_nodes):
            self._spawn(
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    self.address,
                    "--port",
                    str(self.supernode_port + i),
                    "--node-config",
                    f"partition-id={i} num-partitions={self.num_nodes}",
                ],
                f"supernode-{i}.log",
            )
        return self

    def stop(self, grace: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _flwr(args: Sequence[str], home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flwr"), *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT,
    )


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def submit(
    overrides: Sequence[str],
    outdir: str,
    superlink: str,
    insecure: bool = True,
    run_timeout: float = 3600.0,
    home: Path | None = None,
) -> dict:
    """``flwr run`` the project against ``superlink`` and wait for the run to finish.

    Returns the final ``flwr ls`` record; raises RuntimeError when the run fails or times out.
    """
    own_home = home is None
    home = home or Path(tempfile.mkdtemp(prefix="fedsim-flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    try:
        return _submit(overrides, outdir, superlink, insecure, run_timeout, home)
    finally:
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


def _submit(
    overrides: Sequence[str],
    outdir: str,
    superlink: str,
    insecure: bool,
    run_timeout: float,
    home: Path,
) -> dict:
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim"\n\n[superlink.fedsim]\naddress = "{superlink}"\n'
        f"insecure = {'true' if insecure else 'false'}\n"
    )
    joined = " ".join(shlex.quote(o) for o in overrides)
    run_config = f"overrides={_toml_string(joined)} outdir={_toml_string(str(outdir))}"
    out = _flwr(
        ["run", str(PROJECT), "fedsim", "--format", "json", "--run-config", run_config], home
    )
    try:
        run_id = json.loads(out.stdout)["run-id"]
    except (ValueError, KeyError) as err:
        raise RuntimeError(f"flwr run failed: {out.stdout.strip()} {out.stderr.strip()}") from err
    deadline = time.monotonic() + run_timeout
    record: dict = {}
    while time.monotonic() < deadline:
        ls = _flwr(["ls", "fedsim", "--run-id", str(run_id), "--format", "json"], home)
        try:
            record = json.loads(ls.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError):
            record = {}
        if str(record.get("status", "")).startswith("finished"):
            break
        time.sleep(1.0)
    else:
        _flwr(["stop", str(run_id), "fedsim"], home)
        raise RuntimeError(f"run {run_id} did not finish within {run_timeout:.0f} s; stopped it")
    logs = _flwr(["log", str(run_id), "fedsim", "--show"], home)
    (Path(outdir) / "serverapp.log").write_text(logs.stdout + logs.stderr)
    if record.get("status") != "finished:completed":
        tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"run {run_id} ended {record.get('status')}: {record.get('status-details', '')}\n{tail}"
        )
    return record


def run_deployment(cfg: Mapping, outdir: str, overrides: Sequence[str]) -> None:
    """Run ``overrides`` (the user's Hydra overrides) as a Flower deployment (module docstring)."""
    engine = cfg["engine"]
    if not (PROJECT / "pyproject.toml").exists():
        raise ConfigError(
            f"engine=deployment runs `flwr run` on the fedsim project; "
            f"{PROJECT / 'pyproject.toml'} is missing"
        )
    Path(outdir).mkdir(parents=True, exist_ok=True)
    timeout = float(engine.get("run_timeout", 3600))
    if cfg["task"].get("path"):  # the apps run elsewhere: they get the file's absolute path
        overrides = [*overrides, f"task.path={cfg['task']['path']}"]
    if engine.get("superlink"):
        submit(
            overrides, outdir, str(engine["superlink"]), bool(engine.get("insecure", True)), timeout
        )
        return
    fed = LocalFederation(
        cfg["num_clients"],
        int(engine["port"]),
        int(engine["supernode_port"]),
        Path(outdir) / "deploy-logs",
    )
    with fed:
        submit(overrides, outdir, fed.address, True, timeout, home=fed.home)
