"""The inline engine: the strategy's Flower hooks driven in this process.

The loop is Flower's legacy ``Server.fit`` without its thread pool: ``initialize_parameters``,
then per round ``configure_fit`` → each client's ``fit`` → ``aggregate_fit`` → ``evaluate``.
Each node keeps one ``Context``, as a SuperNode does, and its NumPyClient is built anew from
``make_client(context)`` for every message, so client code and state handling are those of the
other engines. What Flower's NumPyClient wrapper would add in a real deployment is reduced to its
checks: arrays are handed over in process (:mod:`fedsim.wire`), with the bits that Flower's
encoding would have sent still counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.client import NumPyClient
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
    Status,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedsim.rng import int_seed
from fedsim.wire import decode, encode, local

log = logging.getLogger("fedsim")
OK = Status(code=Code.OK, message="Success")


class InlineClientProxy(ClientProxy):
    """A node in this process; builds its NumPyClient from ``make_client`` for every message."""

    def __init__(
        self, node_id: int, make_client: Callable[[Context], NumPyClient], context: Context
    ) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id
        self.make_client = make_client
        self.context = context

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        props = self.make_client(self.context).get_properties(ins.config)
        return GetPropertiesRes(status=OK, properties=props)

    def get_parameters(self, ins: GetParametersIns, timeout, group_id) -> GetParametersRes:
        arrays = self.make_client(self.context).get_parameters(ins.config)
        return GetParametersRes(status=OK, parameters=encode(arrays))

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        out = self.make_client(self.context).fit(decode(ins.parameters, copy=True), ins.config)
        if not (
            len(out) == 3
            and isinstance(out[0], list)
            and isinstance(out[1], int)
            and isinstance(out[2], dict)
        ):
            raise TypeError("NumPyClient.fit must return (list of arrays, int, dict)")
        return FitRes(status=OK, parameters=local(out[0]), num_examples=out[1], metrics=out[2])

    def evaluate(self, ins: EvaluateIns, timeout, group_id) -> EvaluateRes:
        loss, n, metrics = self.make_client(self.context).evaluate(
            decode(ins.parameters, copy=True), ins.config
        )
        return EvaluateRes(status=OK, loss=float(loss), num_examples=n, metrics=metrics)

    def reconnect(self, ins: ReconnectIns, timeout, group_id) -> DisconnectRes:
        return DisconnectRes(reason="")


def make_nodes(
    make_client: Callable[[Context], NumPyClient], num_nodes: int, seed: int
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
        manager.register(InlineClientProxy(node_id, make_client, context))
    return manager


def run_rounds(
    strategy: Strategy,
    manager: SimpleClientManager,
    num_rounds: int,
    after_round: Callable[[int], None] | None = None,
    start: int = 0,
) -> None:
    """Flower's legacy round loop, sequential and in this process; ``after_round(rnd)`` (if
    given) sees the strategy and the nodes' contexts after each round, e.g. to check an
    invariant or take a checkpoint. ``start > 0``: the strategy and the nodes hold the state
    after round ``start`` (a resumed run), and the loop goes on from there."""
    if start > 0:
        parameters = strategy.resume_parameters(start)
    else:
        parameters = strategy.initialize_parameters(manager)
        if parameters is None:
            raise RuntimeError("the strategy did not initialize the model")
        strategy.evaluate(0, parameters)
    for rnd in range(start + 1, num_rounds + 1):
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
            results.append((proxy, res))
        new, _ = strategy.aggregate_fit(rnd, results, failures)
        if new is not None:
            parameters = new
        strategy.evaluate(rnd, parameters)
        if after_round is not None:
            after_round(rnd)
