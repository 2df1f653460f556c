"""The inline engine: the strategy's Flower hooks driven in this process.

The loop is Flower's legacy ``Server.fit`` without its thread pool: ``initialize_parameters``,
then per round ``configure_fit`` → ``Client.fit`` for each instruction → ``aggregate_fit`` →
``evaluate``. Client proxies call ``client_fn(context)`` directly and keep one ``Context`` per
node, as Flower's SuperNodes do, so the very same NumPyClient code and state handling run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.client import Client
from flwr.common import (
    Code,
    Context,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    ReconnectIns,
    RecordDict,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedsim.rng import int_seed

log = logging.getLogger("fedsim")


class InlineClientProxy(ClientProxy):
    """A node in this process: builds its client from ``client_fn`` for every message."""

    def __init__(self, node_id: int, client_fn: Callable[[Context], Client], context: Context):
        super().__init__(str(node_id))
        self.node_id = node_id
        self.client_fn = client_fn
        self.context = context

    def _client(self) -> Client:
        return self.client_fn(self.context)

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        return self._client().get_properties(ins)

    def get_parameters(self, ins: GetParametersIns, timeout, group_id) -> GetParametersRes:
        return self._client().get_parameters(ins)

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        return self._client().fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout, group_id) -> EvaluateRes:
        return self._client().evaluate(ins)

    def reconnect(self, ins: ReconnectIns, timeout, group_id) -> DisconnectRes:
        return DisconnectRes(reason="")


def make_nodes(
    client_fn: Callable[[Context], Client], num_nodes: int, seed: int
) -> SimpleClientManager:
    """``num_nodes`` in-process nodes with random node ids and ``partition-id`` node configs."""
    manager = SimpleClientManager()
    for pid in range(num_nodes):
        node_id = int_seed(seed, 0, "node-id", pid)
        context = Context(
            run_id=0,
            node_id=node_id,
            node_config={"partition-id": pid, "num-partitions": num_nodes},
            state=RecordDict(),
            run_config={},
        )
        manager.register(InlineClientProxy(node_id, client_fn, context))
    return manager


def run_rounds(strategy: Strategy, manager: SimpleClientManager, num_rounds: int) -> None:
    """Flower's legacy round loop, sequential and in this process."""
    parameters = strategy.initialize_parameters(manager)
    if parameters is None:
        raise RuntimeError("the strategy did not initialize the model")
    strategy.evaluate(0, parameters)
    for rnd in range(1, num_rounds + 1):
        instructions = strategy.configure_fit(rnd, parameters, manager)
        results: list[tuple[ClientProxy, FitRes]] = []
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = []
        for proxy, ins in instructions:
            try:
                res = proxy.fit(ins, None, rnd)
            except Exception as err:  # noqa: BLE001 - a crashing client is a counted failure
                log.warning("client %s raised in fit: %r", proxy.cid, err)
                failures.append(err)
                continue
            if res.status.code == Code.OK:
                results.append((proxy, res))
            else:
                failures.append((proxy, res))
        new, _ = strategy.aggregate_fit(rnd, results, failures)
        if new is not None:
            parameters = new
        strategy.evaluate(rnd, parameters)


def run_inline(server_fn: Callable, client_fn: Callable, num_nodes: int, seed: int) -> None:
    """Run a bound ServerApp/ClientApp pair's functions in this process."""
    components = server_fn(Context(0, 0, {}, RecordDict(), {}))
    server = components.server
    run_rounds(
        server.strategy, make_nodes(client_fn, num_nodes, seed), components.config.num_rounds
    )
