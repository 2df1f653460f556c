"""Machinery shared by every fedsim strategy.

:class:`FedsimStrategy` is a Flower ``Strategy`` that

- learns the node → partition-id map once, by a ``get_properties`` call to every node, and from
  then on addresses clients by partition id (works in simulation and deployment alike);
- asks its :class:`~fedsim.blocks.samplers.Sampler` for each round's cohort;
- hands results to the method in partition-id order, so summation order never depends on the
  engine or on arrival order;
- counts failures (exceptions, missing replies, arrays of the wrong shape or non-finite values)
  and applies the failure policy;
- measures traffic (bits of the arrays that crossed the wire, paper-convention floats, sample
  gradients) and writes ``metrics.csv`` through :class:`~fedsim.metrics.MetricsRecorder`.

A method subclasses it and implements :meth:`fit_config` (what each sampled client receives) and
:meth:`apply` (the server update from the cohort's replies).

**Byzantine clients** (methods whose ``uses`` lists ``attack``). Between the reply check and
:meth:`apply` every valid reply gets its decoded vector (:meth:`reply_vector`); an omniscient
attack (ALIE, IPM, shift-back) then replaces the vectors of this round's Byzantine clients by the
one vector it forges from the honest vectors it may see: the cohort's honest replies
(``attack.oracle=cohort``), or every honest client's (``oracle=all``: the clients outside the
cohort are asked too, flagged ``oracle`` in their config; their replies feed the adversary only
and count in no traffic column). The method then combines the vectors with
:meth:`robust_aggregate` (clip → bucket → aggregate, :mod:`fedsim.blocks.robust`). Client-side
attacks (bit flip, label flip, Gaussian noise) are NumPyClient wrappers
(:mod:`clients.attacks`) and need nothing here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedsim import status
from fedsim.blocks.aggregators import build_aggregator
from fedsim.blocks.attacks import Attack, build_attack
from fedsim.blocks.robust import RobustStep
from fedsim.blocks.samplers import Cohort, Sampler
from fedsim.checkpoint import STATE_BLOB, STATE_KEY, Checkpoint, Schedule
from fedsim.checkpoint import save as save_checkpoint
from fedsim.metrics import MetricsRecorder, evaluate
from fedsim.rng import generator
from fedsim.status import RunInterrupted, mark
from fedsim.tasks.base import Task
from fedsim.wire import decode, encode, wire_bits

log = logging.getLogger("fedsim")


class RunAborted(RuntimeError):
    """Too many consecutive rounds could not proceed (see ``max_failed_rounds``). ``rows``: the
    metrics rows written before the stop."""

    status = "aborted"
    rows: list[dict] = []


class RunDiverged(RuntimeError):
    """An evaluated loss is not finite, or ``|f(x_t)| > max_loss_ratio · |f(x_0)|``: the
    iterates blew up (a stepsize too large), which is not a client failure. ``rows``: the
    metrics rows written before the stop (the last one holds the loss that stopped it)."""

    status = "diverged"
    rows: list[dict] = []

    def __init__(self, rnd: int, loss: float, loss0: float, ratio: float | None) -> None:
        grew = "is not finite" if not np.isfinite(loss) else f"exceeds {ratio:g} × |f(x_0)|"
        super().__init__(
            f"the loss {loss:.6g} at round {rnd} {grew} "
            f"(f(x_0) = {loss0:.6g}, max_loss_ratio={ratio})"
        )
        self.rnd, self.loss, self.loss0 = rnd, loss, loss0


@dataclass(frozen=True)
class RunSettings:
    """Run-level settings every strategy needs (from the top of the config)."""

    seed: int = 0
    num_rounds: int = 1
    eval_every: int = 1
    max_failure_fraction: float = 0.5
    max_failed_rounds: int = 3
    max_loss_ratio: float | None = 1e6
    checkpoint_every: int | None = None
    checkpoint_every_s: float | None = None
    tensorboard: dict | None = None  # the logger=tensorboard options, or None
    outdir: str | None = None
    progress: bool = False
    discovery_timeout: float = 120.0
    # Whether this strategy must name the clients that sent no reply: on deployment nobody else
    # does (Flower hands the strategy bare exceptions), inline and ray name them as they fail.
    name_missing: bool = False
    # Whether the last round marks summary.json "completed": a deployed ServerApp runs in another
    # process, and the submitting `python -m fedsim` watches that file to know the rounds are over.
    mark_done: bool = False


@dataclass(slots=True)
class Reply:
    """One client's valid reply: its arrays and its metrics, keyed by partition id."""

    pid: int
    arrays: list[np.ndarray]
    metrics: dict[str, Scalar]
    num_examples: int
    vector: np.ndarray | None = None  # decoded (and, for a Byzantine client, forged) vector


class FedsimStrategy(Strategy):
    """Base class of fedsim strategies (see the module docstring).

    ``uses`` names the building-block groups (``compressor``, ``aggregator``, ``attack``) the
    method reads; for any other group the config must keep the neutral choice.
    """

    uses: tuple[str, ...] = ()
    # Attributes rebuilt from the config when a run resumes; every other attribute is the
    # method's state and goes into a checkpoint (state_dict). A method whose attributes hold
    # something unpicklable or rebuilt from the config adds its names here.
    transient: tuple[str, ...] = (
        "task",
        "sampler",
        "settings",
        "attack",
        "byzantine",
        "robust",
        "recorder",
        "_proxies",
        "_pid_of",
        "_bar",
        "_cohort",
        "_offset",
        "_resume_nodes",
        "_schedule",
    )
    # True when fit_config has no side effects and clients keep no state that an extra
    # ``oracle`` call could change, so ``attack.oracle=all`` may ask every honest client.
    oracle_ready: bool = False

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        settings: RunSettings,
        attack: Attack | None = None,
        robust: RobustStep | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.sampler = sampler
        self.settings = settings
        self.attack = attack if attack is not None and attack.name != "none" else None
        self.byzantine = frozenset(self.attack.ids) if self.attack is not None else frozenset()
        self.robust = robust
        # the aggregator's state (centered clipping's centre), one per kind of vector aggregated
        self.robust_state: dict[str, object] = {}
        self._oracle: set[int] = set()
        self.oracle_template = -1  # the cohort member whose message the oracle calls copy
        self.x = np.array(task.x0, dtype=float, copy=True)
        path = Path(settings.outdir) / "metrics.csv" if settings.outdir else None
        self.recorder = MetricsRecorder(path, settings.tensorboard)
        self._proxies: dict[int, ClientProxy] = {}
        self._pid_of: dict[str, int] = {}  # proxy cid -> partition id
        self._cohort: Cohort | None = None
        self._failed_rounds = 0
        self._bar = None
        self._offset = 0  # a resumed run: Flower's round r is the run's round r + _offset
        self._resume_nodes: dict[int, bytes] | None = None  # node states to put back
        self._schedule = Schedule(settings.checkpoint_every, settings.checkpoint_every_s)

    # ----------------------------------------------------------------- method hooks
    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        """Per sampled partition id: the arrays and the flat config it receives."""
        raise NotImplementedError

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        """Update the server state (``self.x`` and the method's own) from the valid replies,
        given in partition-id order."""
        raise NotImplementedError

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        """Shapes a valid reply of client ``pid`` must have this round (default: one vector of
        the model's size)."""
        return [(self.task.dim,)]

    def expected_dtypes(self, pid: int) -> list[np.dtype] | None:
        """Dtypes a valid reply of client ``pid`` must have this round (default: any)."""
        return None

    def down_floats(self, arrays: list[np.ndarray]) -> int:
        """Real numbers sent to one client, by the papers' convention (default: all entries)."""
        return sum(int(a.size) for a in arrays)

    def cohort(self, rnd: int) -> Cohort:
        """The clients of round ``rnd`` (default: the sampler's cohort)."""
        return self.sampler.sample(rnd)

    def reply_vector(self, rnd: int, reply: Reply) -> np.ndarray:
        """The vector a reply stands for, decoded (default: its only array)."""
        return reply.arrays[0]

    def shift_back_target(self, rnd: int) -> np.ndarray:
        """The vector that, as this round's aggregate, would put the model back at ``x0`` (the
        shift-back attack's message). Methods that accept ``attack=shb`` override it."""
        raise NotImplementedError(f"{type(self).__name__} does not support attack=shb")

    def robust_aggregate(
        self,
        rnd: int,
        xs: np.ndarray,
        clip: float | None = None,
        reference: np.ndarray | None = None,
        kind: str = "vector",
    ) -> np.ndarray:
        """``reference + Agg(clip(xs − reference))`` with the configured aggregator, its
        bucketing drawn from ``(seed, rnd, "aggregator")``. Its state (centered clipping's
        centre) is carried over rounds per ``kind`` of vector, so gradients and gradient
        differences never share a centre."""
        assert self.robust is not None, "this method was built without an aggregator"
        rng = generator(self.settings.seed, rnd, "aggregator")
        state = self.robust_state.get(kind)
        if state is None:
            state = self.robust.init(self.task.dim)
        out, self.robust_state[kind] = self.robust(xs, state, rng, clip, reference)
        return out

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, object]:
        """The server's state between rounds: every attribute but the :attr:`transient` ones,
        and the metrics so far (:mod:`fedsim.checkpoint`)."""
        state = {k: v for k, v in vars(self).items() if k not in self.transient}
        state["recorder"] = self.recorder.state()
        return state

    def resume_from(self, ckpt: Checkpoint) -> int:
        """Continue after the checkpoint's round (on a strategy built from the same config):
        load the server state, keep the nodes' states to put back once the nodes are known,
        and number Flower's rounds from there. Returns the rounds left to run."""
        state = dict(ckpt.strategy)
        recorder = state.pop("recorder")
        vars(self).update(state)
        self.recorder.load(recorder, ckpt.wall_s)  # type: ignore[arg-type]
        self._offset = ckpt.round
        self._resume_nodes = dict(ckpt.nodes)
        return self.settings.num_rounds - ckpt.round

    def _ask_nodes(self, configs: dict[int, dict[str, Scalar]]) -> dict[int, dict[str, Scalar]]:
        """A ``get_properties`` call with its config to each node given (in parallel)."""
        timeout = self.settings.discovery_timeout

        def ask(pid: int) -> tuple[int, dict[str, Scalar]]:
            ins = GetPropertiesIns(configs[pid])
            return pid, self._proxies[pid].get_properties(
                ins, timeout=timeout, group_id=0
            ).properties

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, len(configs))) as pool:
            return dict(pool.map(ask, sorted(configs)))

    def node_states(self) -> dict[int, bytes]:
        """Every node's ``context.state``, collected by a message to each node (DESIGN §8b:
        the contexts are the nodes', on every engine)."""
        answers = self._ask_nodes({pid: {STATE_KEY: "get"} for pid in self._proxies})
        return {pid: bytes(a[STATE_BLOB]) for pid, a in answers.items()}

    def _put_node_states(self, states: dict[int, bytes]) -> None:
        configs = {pid: {STATE_KEY: "put", STATE_BLOB: blob} for pid, blob in states.items()}
        answers = self._ask_nodes(configs)
        if not all(a.get("restored") for a in answers.values()):
            raise RunAborted("some nodes did not take their state back: cannot resume")

    def _after_round(self, rnd: int) -> None:
        """Checkpoint when it is due, or when a signal asked the run to stop (then stop)."""
        stop = status.pending_signal
        outdir = self.settings.outdir
        if outdir is not None and rnd < self.settings.num_rounds:
            if stop is not None or self._schedule.due(rnd):
                self._save_checkpoint(outdir, rnd)
        if stop is not None:
            if self._bar is not None:
                self._bar.close()
            self.recorder.close()
            raise RunInterrupted(stop, rnd)

    def _save_checkpoint(self, outdir: str, rnd: int) -> None:
        """Write round ``rnd``'s checkpoint; a node that cannot send its state (it hangs, or
        crashed) skips this checkpoint with a warning rather than stop the run (the previous
        checkpoint stays)."""
        try:
            nodes = self.node_states()
        except Exception as err:  # noqa: BLE001 - any node failure only costs this checkpoint
            log.warning("round %d: checkpoint skipped, a node did not send its state: %s", rnd, err)
            return
        save_checkpoint(outdir, rnd, self.state_dict(), nodes, self.recorder.wall())

    # ----------------------------------------------------------------- Flower hooks
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        if not self._offset:
            self.recorder.restart_clock()
        if self.settings.progress:
            from fedsim.progress import progress_bar

            self._bar = progress_bar(self.settings.num_rounds)
            if self._offset:
                self._bar.update(self._offset)
        return encode([self.x])

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        server_round += self._offset
        if not self._proxies:
            try:
                self._proxies = discover(client_manager, self.task.num_clients, self.settings)
            except RunAborted as err:
                raise self._stop(err) from None
            self._pid_of = {proxy.cid: pid for pid, proxy in self._proxies.items()}
        if self._resume_nodes is not None:
            self._put_node_states(self._resume_nodes)
            self._resume_nodes = None
        cohort = self.cohort(server_round)
        self._cohort = cohort
        out = []
        down_bits = down_floats = 0
        # Clients that receive the very same arrays share one encoding: (params, bits, floats).
        shared: dict[int, tuple[Parameters, int, int]] = {}
        instructions = self.fit_config(server_round, cohort)
        for pid, (arrays, config) in instructions.items():
            entry = shared.get(id(arrays))
            if entry is None:
                params = encode(arrays)
                entry = shared[id(arrays)] = (params, wire_bits(params), self.down_floats(arrays))
            params = entry[0]
            down_bits += entry[1]
            down_floats += entry[2]
            config = {"round": server_round, **config}
            out.append((self._proxies[pid], FitIns(params, config)))
        self.recorder.add(down_bits=down_bits, down_floats=down_floats)
        self._oracle = set()
        if self.attack is not None and self.attack.is_omniscient and self.attack.oracle == "all":
            out += self._oracle_instructions(server_round, cohort, instructions)
        return out

    def _oracle_instructions(
        self, rnd: int, cohort: Cohort, instructions: dict
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The honest clients outside the cohort get the cohort's message, flagged ``oracle``:
        their replies are seen by the adversary only (``attack.oracle=all``)."""
        if not instructions:
            return []
        self.oracle_template = next(iter(instructions))
        arrays, config = instructions[self.oracle_template]
        params = encode(arrays)
        everyone = set(range(self.task.num_clients))
        self._oracle = everyone - set(cohort.ids.tolist()) - self.byzantine
        config = {"round": rnd, **config, "oracle": 1}
        return [(self._proxies[pid], FitIns(params, config)) for pid in sorted(self._oracle)]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        server_round += self._offset
        cohort = self._cohort
        assert cohort is not None
        replies: list[Reply] = []
        up_bits = up_floats = 0
        evals: int | None = 0
        sampled = set(cohort.ids.tolist())
        seen: list[Reply] = []  # honest replies of clients outside the cohort (oracle=all)
        for proxy, res in results:
            pid = self._pid_of.get(proxy.cid, -1)
            if pid in self._oracle:
                extra = self._check(pid, res, self._oracle)
                if extra is not None:
                    seen.append(extra)
                continue
            up_bits += wire_bits(res.parameters)
            reply = self._check(pid, res, sampled)
            if reply is None:
                continue
            replies.append(reply)
            floats = reply.metrics.get("up_floats")
            up_floats += int(floats) if floats is not None else sum(a.size for a in reply.arrays)
            done = reply.metrics.get("grad_evals")
            evals = None if done is None or evals is None else evals + int(done)
        # exceptions + garbage + never answered = the cohort less its valid replies (oracle
        # calls are not the cohort's and never count)
        n_failed = max(0, len(cohort.ids) - len(replies))
        if n_failed and self.settings.name_missing:
            self._name_missing(server_round, sampled, results, failures)
        replies.sort(key=lambda r: r.pid)
        seen.sort(key=lambda r: r.pid)
        if "attack" in self.uses:
            self._forge(server_round, cohort, replies, seen)
        self.recorder.add(
            up_bits=up_bits,
            up_floats=up_floats,
            grad_evals=evals,
            clients=len(replies),
            failures=n_failed,
        )
        too_many = n_failed > self.settings.max_failure_fraction * len(cohort.ids)
        if n_failed and self.robust is not None and not self.robust.is_mean:
            too_many |= len(replies) < self.robust.aggregator.min_inputs()  # e.g. Krum's n − f − 2
        if n_failed and (too_many or not replies):
            self._failed_rounds += 1
            log.warning(
                "round %d: %d of %d clients failed; the model is left unchanged",
                server_round,
                n_failed,
                len(cohort.ids),
            )
            if self._failed_rounds >= self.settings.max_failed_rounds:
                raise self._stop(
                    RunAborted(
                        f"{self._failed_rounds} consecutive rounds failed (more than "
                        f"max_failure_fraction={self.settings.max_failure_fraction} of the "
                        "cohort); stopping the run"
                    )
                )
            return None, {"failures": n_failed}
        self._failed_rounds = 0
        self.apply(server_round, cohort, replies)
        return encode([self.x]), {"failures": n_failed}

    def _forge(self, rnd: int, cohort: Cohort, replies: list[Reply], seen: list[Reply]) -> None:
        """Decode every reply's vector; an omniscient attack replaces the Byzantine ones."""
        for r in replies + seen:
            r.vector = np.asarray(self.reply_vector(rnd, r), dtype=np.float64)
        attack = self.attack
        if attack is None or not attack.is_omniscient:
            return
        fakes = [r for r in replies if r.pid in self.byzantine]
        if not fakes:
            return
        honest = [r.vector for r in replies if r.pid not in self.byzantine]
        honest += [r.vector for r in seen]
        stack = np.stack(honest) if honest else np.zeros((0, self.task.dim))
        # the round's participants are the clients whose replies arrived
        target = self.shift_back_target(rnd) if attack.name == "shb" else None
        forged = attack.forge(stack, len(fakes), len(replies), target)
        for r in fakes:
            r.vector = forged

    def _name_missing(
        self,
        rnd: int,
        sampled: set[int],
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> None:
        """One WARNING per sampled client with no reply at all (a timeout, or an error on its
        node; the reasons Flower gave follow in one line): garbage replies are named by
        :meth:`_check` already."""
        answered = {self._pid_of.get(proxy.cid, -1) for proxy, _ in results}
        answered |= {self._pid_of.get(f[0].cid, -1) for f in failures if isinstance(f, tuple)}
        reasons = sorted({str(f) for f in failures if isinstance(f, BaseException)})
        for pid in sorted(sampled - answered):
            log.warning(
                "client %d: no reply to its fit of round %d (timed out after the round timeout, "
                "or failed on its node); counted as a failure",
                pid,
                rnd,
            )
        if reasons:
            log.warning("round %d: Flower reported %s", rnd, "; ".join(reasons))

    def _check(self, pid: int, res: FitRes, sampled: set[int]) -> Reply | None:
        """A valid reply of client ``pid`` (known from the proxy that answered, not from the
        reply), or None for garbage: unreadable arrays, wrong shapes, non-finite values, or a
        client that was not sampled this round."""
        if pid not in sampled:
            log.warning("a reply came from a node that was not sampled; counted as a failure")
            return None
        try:
            arrays = decode(res.parameters)
        except Exception:  # noqa: BLE001 - anything unreadable is a failure
            log.warning("client %d sent an unreadable reply; counted as a failure", pid)
            return None
        shapes = [a.shape for a in arrays]
        like = self.oracle_template if pid in self._oracle else pid  # oracle calls copy a message
        dtypes = self.expected_dtypes(like)
        if dtypes is not None and [a.dtype for a in arrays] != dtypes:
            log.warning(
                "client %d sent arrays of dtypes %s; failure", pid, [a.dtype for a in arrays]
            )
            return None
        if shapes != self.expected_shapes(like) or not all(np.isfinite(a).all() for a in arrays):
            log.warning(
                "client %d sent arrays %s (non-finite or wrong shape); failure", pid, shapes
            )
            return None
        return Reply(pid, arrays, res.metrics, int(res.num_examples))

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # fedsim evaluates centrally, on the server

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0 and self._offset:
            return None  # a resumed run: the checkpoint's rows hold round 0
        server_round += self._offset
        s = self.settings
        last = server_round == s.num_rounds
        bar = self._bar if server_round > 0 else None
        if not (server_round % s.eval_every == 0 or last):
            if bar is not None:
                bar.update(1)
            self._after_round(server_round)
            return None
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged model is reported below
            row = self.recorder.row(server_round, evaluate(self.task, self.x))
        self._check_divergence(server_round, float(row["loss"]))
        if bar is not None:
            shown = "gap" if row.get("gap") is not None else "loss"
            bar.set_postfix({shown: f"{row[shown]:.3e}"}, refresh=False)
            bar.update(1)
            if last:
                bar.close()
        if last:
            self.recorder.close()
            if s.mark_done:
                mark(s.outdir, "completed")
        if server_round > 0:
            self._after_round(server_round)
        metrics = {k: v for k, v in row.items() if isinstance(v, int | float)}
        return float(row["loss"]), metrics

    def _check_divergence(self, rnd: int, loss: float) -> None:
        """Raise :class:`RunDiverged` when ``loss`` is not finite or exceeds ``max_loss_ratio``
        times the round-0 loss in absolute value (the round-0 row is written first)."""
        if rnd == 0:
            self._loss0 = loss
        loss0 = getattr(self, "_loss0", loss)
        ratio = self.settings.max_loss_ratio
        if not np.isfinite(loss) or (
            ratio is not None and loss0 != 0 and abs(loss) > ratio * abs(loss0)
        ):
            raise self._stop(RunDiverged(rnd, loss, loss0, ratio))

    def _stop(self, err: RunAborted | RunDiverged) -> RunAborted | RunDiverged:
        """Close the progress bar and record the stop in ``summary.json`` (the ServerApp may run
        in another process than ``python -m fedsim``, as in deployment): return ``err``."""
        if self._bar is not None:
            self._bar.close()
        self.recorder.close()
        mark(self.settings.outdir, err.status, str(err))
        err.rows = self.recorder.rows  # the rows so far, for callers of the Python API
        return err


def robust_blocks(
    method: Mapping, task: Task, settings: RunSettings
) -> tuple[Attack | None, RobustStep | None]:
    """The attack and the robust step named by a method's ``attack``/``aggregator`` sections."""
    attack_cfg = method.get("attack") or {"name": "none"}
    attack = build_attack(attack_cfg, task.num_clients, settings.seed)
    agg = build_aggregator(method.get("aggregator") or {"name": "mean"}, len(attack.ids))
    return (attack if attack.name != "none" else None), RobustStep(agg)


def discover(
    client_manager: ClientManager, num_clients: int, s: RunSettings
) -> dict[int, ClientProxy]:
    """Wait for ``num_clients`` nodes, then ask each for its ``partition-id`` (in parallel)."""
    deadline = time.monotonic() + s.discovery_timeout
    while client_manager.num_available() < num_clients:
        if time.monotonic() > deadline:
            raise RunAborted(
                f"only {client_manager.num_available()} of {num_clients} clients connected "
                f"within {s.discovery_timeout:.0f} s"
            )
        time.sleep(0.05)
    proxies = list(client_manager.all().values())

    def ask(proxy: ClientProxy) -> tuple[int, ClientProxy]:
        res = proxy.get_properties(GetPropertiesIns({}), timeout=s.discovery_timeout, group_id=0)
        return int(res.properties["partition-id"]), proxy

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, len(proxies))) as pool:
        answers = list(pool.map(ask, proxies))
    found = dict(answers)
    if len(found) != len(answers):
        pids = sorted(pid for pid, _ in answers)
        twice = sorted({p for p in pids if pids.count(p) > 1})
        raise RunAborted(f"several nodes report the same partition ids {twice[:10]}")
    unknown = sorted(set(found) - set(range(num_clients)))
    missing = sorted(set(range(num_clients)) - set(found))
    if missing or unknown:
        raise RunAborted(
            f"the nodes do not match num_clients={num_clients}: missing partition ids "
            f"{missing[:10]}, unexpected {unknown[:10]}"
        )
    return found
