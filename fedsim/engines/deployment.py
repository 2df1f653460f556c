"""The deployment engine: the same ServerApp/ClientApp on real Flower infrastructure.

``flwr run`` packs the project (``pyproject.toml`` names ``fedsim.app:server_app`` and
``fedsim.app:client_app``) and submits it to a SuperLink; the apps read the resolved config
that ``python -m fedsim`` sends as JSON in the run config's ``config`` (or compose the very same
Hydra config from its ``overrides`` string, for a ``flwr run`` by hand) and the ServerApp writes
``metrics.csv`` into ``outdir``. :class:`LocalFederation` starts a SuperLink and SuperNodes on
127.0.0.1 (for a local deployment and for tests) and stops every process it started by PID.

``engine.secure=true`` (``LocalFederation(secure=True)``) uses Flower's own mechanisms for a
federation with TLS and SuperNode authentication. Per run, :mod:`fedsim.engines.certs` writes
into the run's folder a CA certificate, a server certificate for 127.0.0.1/localhost signed by
it, and one EC key pair per SuperNode (private keys 0600). The SuperLink serves its Fleet,
Control and Runtime APIs over TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``) with
``--enable-supernode-auth``, which in Flower 1.42 turns off self-registration over the Fleet
API: each SuperNode's public key is registered through the Control API (``flwr supernode
register``) before that SuperNode starts, with ``--root-certificates`` and
``--auth-supernode-private-key``; its own Runtime API (to its SuperExec) uses the same server
certificate. ``flwr`` connects with ``root-certificates`` in ``$FLWR_HOME/config.toml``. A
SuperNode whose key was not registered is refused at activation and exits.
"""

from __future__ import annotations

import importlib.util
import json
import math
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
from fedsim.status import SUMMARY_FILE

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # SuperLink and SuperNodes start `flower-superexec` through PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    # Each SuperExec asks for work every second by default, and every ClientApp and ServerApp
    # start waits for that poll; on 127.0.0.1 a quarter second costs nothing.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.25")
    return env


def _wait_port(port: int, timeout: float) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection within ``timeout`` s (with ``timeout``
    0: whether it does now)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def check_secure(engine: Mapping) -> None:
    """``engine.secure``: a boolean, for the local federation only (``engine.superlink=null``)."""
    secure = engine.get("secure", False)
    if not isinstance(secure, bool):
        raise ConfigError(f"engine.secure must be true or false, got {secure!r}")
    if not secure:
        return
    if engine.get("superlink") is not None:
        raise ConfigError(
            "engine.secure=true starts fedsim's own local federation with TLS and SuperNode "
            f"authentication, but engine.superlink={engine['superlink']!r} names a SuperLink "
            "of yours, whose TLS and SuperNode keys you set up; set engine.secure=false "
            "(engine.insecure=false connects to it with TLS) or engine.superlink=null"
        )
    if importlib.util.find_spec("cryptography") is None:
        raise ConfigError(
            "engine.secure=true generates certificates with the `cryptography` package "
            "(a dependency of flwr), which this environment lacks"
        )


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, each in its own session.

    ``pids`` lists the processes started; :meth:`stop` sends SIGTERM to each one's process
    group (their ``flower-superexec``/``flwr-*app`` children included, also those of a SuperNode
    that exited on its own, as long as no one reaped it), then SIGKILL. With
    ``secure=True`` the federation runs with TLS and SuperNode authentication (module docstring);
    certificates and keys go to ``certdir`` (default ``logdir/tls``) and stay there.
    """

    def __init__(
        self,
        num_nodes: int,
        port: int,
        supernode_port: int,
        logdir: Path,
        secure: bool = False,
        certdir: Path | None = None,
    ) -> None:
        self.num_nodes = num_nodes
        self.port = port
        self.supernode_port = supernode_port
        self.logdir = Path(logdir)
        self.secure = secure
        self.certdir = Path(certdir) if certdir is not None else self.logdir / "tls"
        self.tls = None  # certs.TLSFiles once a secure federation has started
        self.node_keys: list[Path] = []  # the registered SuperNodes' private keys
        self.node_ids: list[int] = []  # the node ids the SuperLink gave their public keys
        self.home = Path(tempfile.mkdtemp(prefix="fedsim-flwr-home-"))
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def root_certificates(self) -> str | None:
        """The CA certificate that ``flwr`` needs to reach a secure SuperLink (else None)."""
        return str(self.tls.ca) if self.tls is not None else None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = (self.logdir / log_name).open("w")
        self._logs.append(log)
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(self.home),
            start_new_session=True,
            cwd=self.logdir,
        )
        self.procs.append(proc)
        return proc

    def _superlink_args(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls.ca),
            "--ssl-certfile",
            str(self.tls.cert),
            "--ssl-keyfile",
            str(self.tls.key),
            "--enable-supernode-auth",
        ]

    def spawn_supernode(
        self, node_config: str, port: int, log_name: str, private_key: Path | None = None
    ) -> subprocess.Popen:
        """Start one SuperNode (``private_key``: its authentication key, secure federations).

        :meth:`start` starts the federation's own; a test may add one, which :meth:`stop` stops.
        """
        if self.tls is None:
            security = ["--insecure"]
        else:  # TLS to the SuperLink, and on its own Runtime API (to its SuperExec)
            security = [
                "--root-certificates",
                str(self.tls.ca),
                "--ssl-certfile",
                str(self.tls.cert),
                "--ssl-keyfile",
                str(self.tls.key),
                "--ssl-ca-certfile",
                str(self.tls.ca),
            ]
            if private_key is not None:
                security += ["--auth-supernode-private-key", str(private_key)]
        return self._spawn(
            [
                str(BIN / "flower-supernode"),
                *security,
                "--superlink",
                self.address,
                "--port",
                str(port),
                "--node-config",
                node_config,
            ],
            log_name,
        )

    def start(self, timeout: float = 60.0) -> LocalFederation:
        try:
            for port in [self.port] + [self.supernode_port + i for i in range(self.num_nodes)]:
                if _wait_port(port, 0):
                    raise ConfigError(
                        f"port {port} on 127.0.0.1 is in use; choose another "
                        "engine.port / engine.supernode_port"
                    )
            if self.secure:
                from fedsim.engines.certs import make_node_key, make_tls

                self.tls = make_tls(self.certdir)
                self.node_keys = []
                publics = []
                for i in range(self.num_nodes):
                    private, public = make_node_key(self.certdir, f"supernode-{i}")
                    self.node_keys.append(private)
                    publics.append(public)
            self._spawn(
                [
                    str(BIN / "flower-superlink"),
                    *self._superlink_args(),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--disable-runtime-dependency-installation",
                ],
                "superlink.log",
            )
            if not _wait_port(self.port, timeout):
                raise RuntimeError(
                    f"the SuperLink did not open port {self.port}; "
                    f"see {self.logdir / 'superlink.log'}"
                )
            if self.secure:
                _write_connection(self.home, self.address, True, self.root_certificates)
                self.node_ids = _register(publics, self.home, timeout)
            for i in range(self.num_nodes):
                self.spawn_supernode(
                    f"partition-id={i} num-partitions={self.num_nodes}",
                    self.supernode_port + i,
                    f"supernode-{i}.log",
                    self.node_keys[i] if self.secure else None,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        for p in self.procs:
            # Not reaped yet (running, or exited but a zombie): its pid, which names its process
            # group, is still ours, so the group's children are stopped too.
            if p.returncode is None:
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


def _register(publics: Sequence[Path], home: Path, timeout: float, parallel: int = 4) -> list[int]:
    """``flwr supernode register`` each public key, ``parallel`` at a time; the node ids, in
    order. Raises RuntimeError when one fails; kills any still running on every exit path."""
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    for first in range(0, len(publics), parallel):
        batch = list(publics[first : first + parallel])
        procs = []
        try:
            for pub in batch:
                procs.append(
                    subprocess.Popen(
                        [str(BIN / "flwr"), "supernode", "register", str(pub), "fedsim"]
                        + ["--format", "json"],
                        env=_env(home),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        cwd=PROJECT,
                    )
                )
            for pub, proc in zip(batch, procs, strict=True):
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                try:
                    ids.append(int(json.loads(out)["node-id"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise RuntimeError(
                        f"flwr supernode register {pub} failed: {out.strip()} {err.strip()}"
                    ) from exc
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return ids


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


def _write_connection(
    home: Path, superlink: str, insecure: bool, root_certificates: str | None = None
) -> None:
    """The ``fedsim`` connection in ``home/config.toml``: TLS with ``root_certificates`` (a CA
    certificate) when given, else ``insecure`` (false: TLS with the system's trust store)."""
    if root_certificates is not None:
        security = f"root-certificates = {_toml_string(str(Path(root_certificates).resolve()))}\n"
    else:
        security = f"insecure = {'true' if insecure else 'false'}\n"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim"\n\n[superlink.fedsim]\naddress = "{superlink}"\n'
        + security
    )


def submit(
    overrides: Sequence[str],
    outdir: str,
    superlink: str,
    insecure: bool = True,
    run_timeout: float = 3600.0,
    home: Path | None = None,
    root_certificates: str | None = None,
    config: str = "",
) -> dict:
    """``flwr run`` the project against ``superlink`` and wait for the run to finish.

    ``config``: the resolved config as :func:`fedsim.app.config_json` writes it; the apps read
    it instead of composing ``overrides`` (which they fall back to when it is "").

    ``root_certificates`` (a CA certificate file, :attr:`LocalFederation.root_certificates`)
    connects with TLS trusting that CA, and overrides ``insecure``. Returns the final ``flwr ls``
    record; raises RuntimeError when the run fails or times out.
    """
    own_home = home is None
    home = home or Path(tempfile.mkdtemp(prefix="fedsim-flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    try:
        _write_connection(home, superlink, insecure, root_certificates)
        return _submit(overrides, outdir, run_timeout, home, config)
    finally:
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


_LS_EVERY = 10.0


def _ended(outdir: str, since: float) -> bool:
    """Whether ``outdir/summary.json`` was written after ``since`` with an end status."""
    path = Path(outdir) / SUMMARY_FILE
    try:
        if path.stat().st_mtime < since:
            return False
        return json.loads(path.read_text()).get("status") not in (None, "running")
    except (OSError, ValueError, AttributeError):
        return False


def _submit(
    overrides: Sequence[str], outdir: str, run_timeout: float, home: Path, config: str = ""
) -> dict:
    submitted = time.time() - 1.0  # file times have coarse resolution
    joined = " ".join(shlex.quote(o) for o in overrides)
    # a TOML file, not `key="value"` pairs: Flower's parser of those cuts a value at its first
    # double quote, and the config's JSON is full of them
    run_config = home / "run-config.toml"
    run_config.write_text(
        "".join(
            f"{key} = {_toml_string(value)}\n"
            for key, value in (("overrides", joined), ("outdir", str(outdir)), ("config", config))
        )
    )
    out = _flwr(
        ["run", str(PROJECT), "fedsim", "--format", "json", "--run-config", str(run_config)],
        home,
    )
    try:
        run_id = json.loads(out.stdout)["run-id"]
    except (ValueError, KeyError) as err:
        raise RuntimeError(f"flwr run failed: {out.stdout.strip()} {out.stderr.strip()}") from err
    deadline = time.monotonic() + run_timeout
    record: dict = {}
    asked = -math.inf
    while time.monotonic() < deadline:
        # Every `flwr ls` is a Python process (~1 s of CPU): ask every 10 s, or every 0.5 s once
        # the ServerApp has marked its summary.json with an end status (it is about to exit).
        if _ended(outdir, submitted) or time.monotonic() - asked >= _LS_EVERY:
            asked = time.monotonic()
            ls = _flwr(["ls", "fedsim", "--run-id", str(run_id), "--format", "json"], home)
            try:
                record = json.loads(ls.stdout)["runs"][0]
            except (ValueError, KeyError, IndexError):
                record = {}
            if str(record.get("status", "")).startswith("finished"):
                break
        time.sleep(0.5)
    else:
        _flwr(["stop", str(run_id), "fedsim"], home)
        raise RuntimeError(f"run {run_id} did not finish within {run_timeout:.0f} s; stopped it")
    logs = _flwr(["log", str(run_id), "fedsim", "--show"], home)
    Path(outdir).mkdir(parents=True, exist_ok=True)  # a ServerApp that failed early made none
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
    check_secure(engine)
    if not (PROJECT / "pyproject.toml").exists():
        raise ConfigError(
            f"engine=deployment runs `flwr run` on the fedsim project; "
            f"{PROJECT / 'pyproject.toml'} is missing"
        )
    Path(outdir).mkdir(parents=True, exist_ok=True)
    timeout = float(engine.get("run_timeout", 3600))
    if cfg["task"].get("path"):  # the apps run elsewhere: they get the file's absolute path
        overrides = [*overrides, f"task.path={cfg['task']['path']}"]
    from fedsim.app import config_json

    config = config_json(cfg)
    if engine.get("superlink"):
        submit(
            overrides,
            outdir,
            str(engine["superlink"]),
            bool(engine.get("insecure", True)),
            timeout,
            config=config,
        )
        return
    fed = LocalFederation(
        cfg["num_clients"],
        int(engine["port"]),
        int(engine["supernode_port"]),
        Path(outdir) / "deploy-logs",
        secure=bool(engine.get("secure", False)),
        certdir=Path(outdir) / "deploy-tls",
    )
    with fed:
        submit(
            overrides,
            outdir,
            fed.address,
            True,
            timeout,
            home=fed.home,
            root_certificates=fed.root_certificates,
            config=config,
        )
