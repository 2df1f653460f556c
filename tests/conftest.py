import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def compose():
    """Compose ``conf/`` with Hydra overrides into a resolved config dict."""
    from fedsim.app import compose as _compose

    def make(*overrides: str) -> dict:
        return _compose(" ".join(("output.progress=false", *overrides)))

    return make
