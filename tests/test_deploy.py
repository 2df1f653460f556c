"""Deployment: a SuperLink and three SuperNodes on 127.0.0.1 with TLS and SuperNode
authentication (an unregistered SuperNode is refused); tamuna, a label-flipping Byzantine client
under robust momentum and R-MARINA on the sphere via flwr run. The ``engine=deployment`` CLI path
(FedAvg with every kind of fault) runs without TLS (``engine.secure=false``, the default)."""

import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509

from fedsim.engines.certs import make_node_key, make_tls
from fedsim.engines.deployment import LocalFederation, check_secure, submit
from fedsim.errors import ConfigError
from fedsim.metrics import read_metrics
from fedsim.runner import run_overrides

# The two local federations run one after the other on one pytest-xdist worker: on 2 cores, 11
# SuperNodes with their ClientApp processes at once would miss the round timeouts.
pytestmark = pytest.mark.xdist_group("deploy")

STATEFUL = [
    "method=tamuna",
    "method.s=2",
    "method.p=0.5",
    "task=logreg_synthetic",
    "task.dim=40",
    "num_clients=3",
    "num_rounds=3",
    "sampler=full",
    "task.samples_per_client=30",
    "engine=deployment",
]


# A Byzantine SuperNode: partition 1 computes its momentum on flipped labels; the server takes
# the coordinate-wise median.
BYZANTINE = [
    "method=robust_momentum",
    "task=logreg_synthetic",
    "num_clients=3",
    "num_rounds=2",
    "sampler=full",
    "task.samples_per_client=30",
    "method.batch_size=30",  # every client's whole data (a larger one is refused)
    "aggregator=cm",
    "attack=label_flip",
    "attack.ids=[1]",
    "engine=deployment",
]


# R-MARINA on the sphere: a shared coin, Rand-K tangent differences re-projected on the server
# (seed 0: round 2 compressed, round 3 dense).
RMARINA = [
    "method=rmarina",
    "task=pca_sphere",
    "task.dim=8",
    "task.samples_per_client=10",
    "num_clients=3",
    "num_rounds=3",
    "sampler=full",
    "compressor=rand_k",
    "compressor.k=2",
    "method.p=0.5",
    "engine=deployment",
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has exited; its parent reaps it
        return fh.read().split()[2] != "Z"


def tls_handshake(port: int, host: str, cafile: str | None) -> None:
    """A TLS handshake with 127.0.0.1:``port`` that checks the certificate against ``host``."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            pass


def watch_exit(pid: int, limit: float) -> list[float]:
    """Seconds until ``pid`` exits (as a one-element list, filled by a thread; empty: still up
    after ``limit`` s). Polls without reaping, so :meth:`LocalFederation.stop` still owns it."""
    began, out = time.monotonic(), []

    def poll() -> None:
        while time.monotonic() - began < limit:
            if not alive(pid):
                out.append(time.monotonic() - began)
                return
            time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return out


def test_deploy_three_supernodes_then_stop_by_pid(tmp_path):
    """Secure: TLS on every API and SuperNode authentication; an extra SuperNode whose key was
    never registered is refused while the registered ones run everything."""
    fed = LocalFederation(
        3, port=19092, supernode_port=19200, logdir=tmp_path / "logs", secure=True
    )
    fed.start()
    try:
        assert len(fed.pids) == 4 and all(alive(p) for p in fed.pids)
        assert len(set(fed.node_ids)) == 3  # one registered node id per public key
        for key in [fed.tls.key, *fed.node_keys]:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        # The SuperLink speaks TLS only, with a certificate valid for 127.0.0.1 and localhost
        # under this run's CA, and unknown to the system's trust store.
        tls_handshake(fed.port, "127.0.0.1", fed.root_certificates)
        tls_handshake(fed.port, "localhost", fed.root_certificates)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_handshake(fed.port, "127.0.0.1", None)
        # An intruder with a well-formed key that nobody registered: the SuperLink refuses to
        # activate it and it exits, while the first run goes on (in parallel, costing no time).
        intruder_key, _ = make_node_key(fed.certdir, "unregistered")
        intruder = fed.spawn_supernode(
            "partition-id=0 num-partitions=3", 19203, "unregistered.log", intruder_key
        )
        exited_after = watch_exit(intruder.pid, 60)

        # Three methods at once (FedAvg is deployed by the test below): the SuperLink runs
        # them side by side, each with its own ServerApp, and every SuperNode serves all three.
        # TAMUNA's control variates live in the SuperNodes' context.state across rounds and
        # its uplink is the pattern's share of the model.
        def deploy(job: tuple[list[str], str]) -> dict:
            overrides, name = job
            return submit(
                overrides,
                str(tmp_path / name),
                fed.address,
                home=tmp_path / f"home-{name}",
                run_timeout=300,
                root_certificates=fed.root_certificates,
            )

        jobs = [(STATEFUL, "tamuna"), (BYZANTINE, "byzantine"), (RMARINA, "rmarina")]
        with ThreadPoolExecutor(len(jobs)) as pool:
            records = list(pool.map(deploy, jobs))
        for record, (_, name) in zip(records, jobs, strict=True):
            assert record["status"] == "finished:completed", name
        assert exited_after, "the unregistered SuperNode was not refused within 60 s"
        assert "Failed to activate SuperNode" in (fed.logdir / "unregistered.log").read_text()
        superlink_log = (fed.logdir / "superlink.log").read_text()
        assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink_log
    finally:
        fed.stop()
    assert not any(alive(p) for p in fed.pids)
    assert processes_mentioning(str(fed.certdir)) == []  # SuperExecs and apps gone too
    rows = read_metrics(tmp_path / "tamuna" / "metrics.csv")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert [r["clients"] for r in rows] == [0, 3, 3, 3]
    # The deployed run computes what the inline engine computes for the same overrides.
    inline = run_overrides([*STATEFUL[:-1], "engine=inline", "output.progress=false"])
    for column in ("loss", "up_bits", "up_floats"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    rows = read_metrics(tmp_path / "byzantine" / "metrics.csv")
    inline = run_overrides([*BYZANTINE[:-1], "engine=inline", "output.progress=false"])
    honest = run_overrides([*BYZANTINE[:-3], "engine=inline", "output.progress=false"])
    for column in ("loss", "gap", "up_bits"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    assert rows[-1]["loss"] != honest[-1]["loss"]  # the flipped labels changed the run
    rows = read_metrics(tmp_path / "rmarina" / "metrics.csv")
    inline = run_overrides([*RMARINA[:-1], "engine=inline", "output.progress=false"])
    for column in ("loss", "grad_norm_sq", "dist_sq", "up_bits", "up_floats"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    assert len({r["up_bits"] for r in rows[1:]}) == 2  # a compressed and a dense round


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read() and alive(int(entry)):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_deploy_engine_runs_a_relative_data_path_and_cleans_up(tmp_path, monkeypatch):
    """``engine=deployment`` as the CLI runs it: its own SuperLink and SuperNodes, a data path
    relative to where the user stands, every kind of fault at once (a hanging SuperNode included)
    counted exactly, and no process left behind. The faults start in round 2
    (``fault.after_round=1``): round 1 shows every SuperNode healthy, and only one round waits
    out the hanging SuperNode's timeout."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    overrides = [
        "method=fedavg",
        "task=logreg_libsvm",
        "task.path=../shared/data/a9a",
        "task.max_samples=400",
        "partition=iid",
        "num_clients=8",
        "num_rounds=2",
        "sampler=full",
        "engine=deployment",
        "engine.port=19093",
        "engine.supernode_port=19210",
        "engine.run_timeout=500",
        # 8 ClientApp processes start per round: on 2 loaded cores that took over 40 s once
        "engine.round_timeout=90",
        # SuperNodes 1-6 misbehave from round 2 on, one kind each; 0 and 7 are healthy
        "fault=mixed",
        "fault.after_round=1",
        "fault.kinds={1:crash,2:drop,3:nan,4:wrong_shape,5:slow,6:hang}",
        "fault.slow_seconds=0.5",
        "max_failure_fraction=1.0",
    ]
    rows = run_overrides(overrides, tmp_path / "run")
    assert [r["failures"] for r in rows] == [0, 0, 5]  # exactly the injected faults
    assert [r["clients"] for r in rows] == [0, 8, 3]  # round 2: 0, 7 and the slow 5 answered
    assert rows[-1]["gap"] < rows[0]["gap"]
    assert processes_mentioning("19093") == []  # the SuperLink and SuperNodes are gone
    log = (tmp_path / "run" / "serverapp.log").read_text()
    for rnd, silent in ((1, set()), (2, {1, 2, 6})):  # every client without a reply is named
        named = {
            int(line.split("client ")[1].split(":")[0])
            for line in log.splitlines()
            if f"no reply to its fit of round {rnd}" in line
        }
        assert named == silent, (rnd, named)
    assert log.count("client 3 sent arrays") == 1 and log.count("client 4 sent arrays") == 1


def test_secure_knob_and_certificates(tmp_path, compose):
    """``engine.secure``: accepted by the deployment config, checked by :func:`check_secure`;
    the certificates chain to the run's CA and cover 127.0.0.1 and localhost."""
    cfg = compose("engine=deployment", "engine.secure=true")
    assert cfg["engine"]["secure"] is True
    check_secure(cfg["engine"])
    check_secure({"superlink": "10.0.0.1:9093", "secure": False})
    with pytest.raises(ConfigError, match="engine.secure must be true or false"):
        check_secure({"secure": "yes"})
    with pytest.raises(ConfigError, match="engine.superlink"):
        check_secure({"superlink": "10.0.0.1:9093", "secure": True})
    files = make_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server = x509.load_pem_x509_certificate(files.cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not list((tmp_path / "tls").glob("ca*.key"))  # the CA key never reaches the disk
    private, public = make_node_key(tmp_path / "tls", "supernode-0")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    for path in (files.key, private):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):  # never overwrites a key
        make_node_key(tmp_path / "tls", "supernode-0")
