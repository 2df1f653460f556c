import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def compose():
    """Compose ``conf/`` with Hydra overrides into a resolved config dict."""
    from fedsim.app import compose as _compose

    def make(*overrides: str) -> dict:
        return _compose(" ".join(("output.progress=false", *overrides)))

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """One Ray head on 127.0.0.1 with free ports (its client-server port too, so two heads on
    one machine cannot collide), ``HOST:PORT``; stopped with its ``--block`` process, which
    takes Ray's processes with it.

    Ready means ``ray start`` printed "Ray runtime started.": its GCS port accepts connections
    seconds earlier, before the raylet has registered, and a driver that joins in that window
    can die inside Ray's core worker (seen on CI under load)."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
    cmd += ["--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    cmd += [f"--ray-client-server-port={free_port()}"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats"]
    log = tmp_path_factory.mktemp("ray_head") / "ray_start.log"
    with log.open("w") as out:
        head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Ray runtime started." not in log.read_text():
        assert head.poll() is None, f"the Ray head exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no Ray head in 120 s: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    head.terminate()
    head.wait(timeout=60)


def pytest_collection_modifyitems(config, items):
    """The deployment tests (one xdist group, about 5 min on one worker) are handed out first, so
    that worker starts them at once while the other workers share the rest of the suite."""

    def deploy_first(item) -> int:
        group = item.get_closest_marker("xdist_group")
        return 0 if group is not None and group.args[:1] == ("deploy",) else 1

    items.sort(key=deploy_first)  # stable: the rest keeps its order
