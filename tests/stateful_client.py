"""A client whose update depends on state kept across rounds in ``context.state``."""

import numpy as np

from clients.fedavg import FedAvgClient


class DampedClient(FedAvgClient):
    """FedAvg client that divides its displacement by 1 + (its earlier participations)."""

    def fit(self, parameters, config):
        arrays, n, metrics = super().fit(parameters, config)
        count = self.load("count")
        seen = 0 if count is None else int(count[0][0])
        self.save("count", [np.array([seen + 1])])
        return [arrays[0] / (1 + seen)], n, {**metrics, "seen": seen}
