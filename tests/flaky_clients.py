"""Local-training clients that fail the way real ones do, for the failure tests.

Client 1 loses the server's message on its 2nd participation (it never runs); client 2 loses its
reply on its 3rd participation (after it ran and saved its state). A participation counter in
``context.state`` makes this happen whatever the sampler draws.
"""

from __future__ import annotations

import numpy as np

from clients.local_training import FiveGCSCCClient, FiveGCSClient, ScaffnewClient, TamunaClient


class Flaky:
    def fit(self, parameters, config):
        calls = self.number("calls") + 1
        self.save("calls", [np.array([calls])])
        if self.pid == 1 and calls == 2:
            raise RuntimeError("message lost before the client ran")
        out = super().fit(parameters, config)
        if self.pid == 2 and calls == 3:
            raise RuntimeError("reply lost after the client saved its state")
        return out


class FlakyScaffnew(Flaky, ScaffnewClient):
    pass


class FlakyTamuna(Flaky, TamunaClient):
    pass


class FlakyFiveGCS(Flaky, FiveGCSClient):
    pass


class FlakyFiveGCSCC(Flaky, FiveGCSCCClient):
    pass


class FloatLevels(FiveGCSCCClient):
    """Client 0 sends qsgd's integer levels as floats (garbage of the right shape) in round 2."""

    def fit(self, parameters, config):
        arrays, n, metrics = super().fit(parameters, config)
        if self.pid == 0 and int(config["round"]) == 2:
            arrays = [a.astype(float) for a in arrays]
        return arrays, n, metrics


class CrashingMomentum:
    """Robust-momentum client 0 raises in every fit (a crashed SuperNode)."""

    def fit(self, parameters, config):
        if self.pid == 0:
            raise RuntimeError("client 0 crashed")
        return super().fit(parameters, config)


from clients.byzantine import RobustMomentumClient  # noqa: E402


class CrashingRobustMomentum(CrashingMomentum, RobustMomentumClient):
    pass
