"""fedsim's Ray backend for Flower's Simulation Engine: timeouts that free their actor, and
client errors in one line. :func:`fedsim.engines.ray.run_ray` installs it for its run.

What Flower 1.42 does (``flwr/server/compat/grid_client_proxy.py``,
``flwr/superlink/grid/inmemory_grid.py``, ``flwr/server/superlink/fleet/vce/vce_api.py``,
``.../vce/backend/raybackend.py``, ``flwr/simulation/ray_transport/ray_actor.py``):

- The legacy server's ``round_timeout`` is nothing but the TTL of each instruction message:
  ``GridClientProxy`` sends ``Message(ttl=round_timeout)`` and ``InMemoryGrid.send_and_receive``
  pulls without a timeout of its own. Once the TTL has passed, the LinkState answers the server
  with an "unavailable" error reply, so the server does count the late client as a failure in
  its own round, on time, but silently: no log line names the timeout.
- The Simulation Engine runs one worker thread per Ray actor. A worker takes a message, pops an
  idle actor and blocks in ``ray.get`` on the job, with no timeout. A job that never ends keeps
  its worker and its actor: every hang shrinks the pool by one, so with two actors a client that
  hangs in two rounds leaves none, the healthy clients' messages wait in the queue until their
  TTL has passed and they fail too; and the run cannot end (``run_api`` joins its workers)
  before the sleeping job returns. Ray cannot interrupt a running task of a (non-async) actor
  (``ray.cancel`` does not apply to them): only killing the actor stops it.
- A ClientApp that raises comes back as a ``RayTaskError``; the backend and the worker log it
  at ERROR with the remote and the local traceback (about 90 lines per failure).

:class:`FedsimRayBackend` changes ``process_message``, the backend's hook for one message, and,
on a Ray shared by several runs (``shared_ray`` or a sweep's), ``build``/``terminate``: the idle
actors of one run are kept warm for the next. ``process_message``:

- it awaits the job until the message expires (``created_at + ttl``: the very instant the
  server gives up on that reply, so nothing the server could still count is lost), then kills
  the actor, puts a fresh one in its place in the pool, logs one WARNING with the partition id
  and sends no reply (a reply to an expired message would only be refused by the LinkState,
  with an ERROR). The worker is free again: a hang costs one actor for its own round only, and
  the run ends as soon as its last round does. The fresh actor needs seconds to start (a Ray
  worker, fedsim's imports): it is handed out last, except to the node whose job timed out,
  which gets it first, so a node that keeps hanging does not take a warm actor from the
  healthy clients. What a hang still costs is capacity, one actor for its round: with a single
  actor the clients queued behind a hanging one time out in that round too, and a healthy
  client gets the fresh actor (and waits for its start-up) only when every warm one is busy;
- a message that has already expired when a worker takes it is not run (WARNING, no reply);
- a client that raised: one WARNING line (partition id, exception) with the traceback at
  DEBUG, and the error reply Flower would have sent; the node's context is left as it was, as
  Flower leaves it after an error;
- an actor that died (``RayActorError``): replaced, WARNING, error reply.

It relies on ``BasicActorPool``'s ``pool`` list, ``_future_to_actor`` map and
``create_actor_fn`` (flwr 1.42, pinned in ``pyproject.toml``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
from flwr.app import Context, Error, Message
from flwr.common.constant import PARTITION_ID_KEY, ErrorCode
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

log = logging.getLogger("fedsim")


def _job(actor: Any, app_fn: Callable, message: Message, cid: str, context: Context) -> Any:
    """The job Flower's ``RayBackend`` submits: the ClientApp on one message, in the actor."""
    return actor.run.remote(app_fn, message, cid, context)


def describe(message: Message) -> str:
    """``fit of round R`` for a training instruction, else its message type."""
    try:
        rnd = message.content.config_records["fitins.config"]["round"]
    except (KeyError, AttributeError, ValueError):
        return f"{message.metadata.message_type} message"
    return f"fit of round {rnd}"


_WRAPPED = "Exception ClientAppException occurred. Message: "


def client_error(err: BaseException) -> str:
    """One line for an exception raised inside a ClientApp, ``Type: message`` of the client's
    own exception. Flower's actor re-raises it as ``ClientAppException(str(ex)) from ex`` and
    Ray sends the chain as text: the client's exception is the last line before "The above
    exception was the direct cause"."""
    first = str(err).split("The above exception was the direct cause", 1)[0]
    lines = [line.strip() for line in first.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    if last.startswith(_WRAPPED):  # no chain: Flower's own wrapper is all there is
        return last[len(_WRAPPED) :]
    kind, sep, text = last.partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}{sep}{text}" if " " not in kind else last


class FedsimRayBackend(RayBackend):
    """Flower's ``RayBackend`` with timeouts that free their actor (module docstring)."""

    def __init__(self, backend_config: dict) -> None:
        super().__init__(backend_config)
        self._lock = threading.Lock()  # submit = take an idle actor: one worker at a time
        self._hung: set[int] = set()  # partition ids whose last job timed out

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        pool = self.pool
        if pool is None or self.app_fn is None:
            return super().process_message(message, context)
        pid = int(context.node_config[PARTITION_ID_KEY])
        ttl = float(message.metadata.ttl)
        left = float(message.metadata.created_at) + ttl - time.time()
        what = describe(message)
        limit = "the round timeout" if what.startswith("fit") else "its timeout"  # = the TTL
        if left <= 0:
            log.warning(
                "client %d: timeout, its %s waited past %s (%g s) for a free Ray actor and was "
                "not run; counted as a failure",
                pid,
                what,
                limit,
                ttl,
            )
            return None, context  # type: ignore[return-value] # no reply: the worker sends none
        with self._lock:
            if pid in self._hung and len(pool.pool) > 1:
                # A node that just hung gets the freshest actor (first in the list, still
                # starting), so it cannot take a warm one from the healthy clients.
                pool.pool.append(pool.pool.pop(0))
            future = pool.submit(_job, (self.app_fn, message, str(pid), context))
        ready, _ = ray.wait([future], timeout=left)
        if not ready:
            self._replace(future, kill=True)
            self._hung.add(pid)
            log.warning(
                "client %d: timeout, no reply to its %s within %s (%g s); counted as a failure, "
                "its Ray actor killed and replaced",
                pid,
                what,
                limit,
                ttl,
            )
            return None, context  # type: ignore[return-value]
        self._hung.discard(pid)
        try:
            return pool.fetch_result_and_return_actor_to_pool(future)
        except ray.exceptions.RayActorError as err:
            self._replace(future, kill=False)
            reason = f"the Ray actor died: {' '.join(str(err).split())[:300]}"
            log.warning("client %d: %s, in its %s; actor replaced", pid, reason, what)
            return _error_reply(message, ErrorCode.UNKNOWN, reason), context
        except ray.exceptions.RayTaskError as err:
            pool.add_actor_back_to_pool(future)
            reason = client_error(err)
            log.warning("client %d raised in its %s: %s", pid, what, reason)
            log.debug("client %d: the ClientApp's traceback:\n%s", pid, err)
            return _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), context
        except Exception:  # anything else: Flower's own handling (the worker logs it)
            pool.add_actor_back_to_pool(future)
            raise

    def build(self, app_fn: Callable) -> None:
        """Flower's pool of actors, or, on a Ray shared by several runs, the previous run's
        actors if they are all idle: their worker processes have fedsim imported already, which
        saves a run the actors' start-up (about 4 s here)."""
        pool = _warm_pool(self.client_resources) if _sharing() else None
        if pool is None:
            super().build(app_fn)
            if _sharing():
                _WARM.update(job=_ray_job(), resources=dict(self.client_resources), pool=self.pool)
            return
        self.pool = pool
        self.app_fn = app_fn
        log.debug("the run reuses the %d warm Ray actors of the previous run", pool.num_actors)

    def terminate(self) -> None:
        """Flower's teardown, except on a shared Ray: there the idle actors stay warm for the
        next run (they go with the Ray, at :func:`fedsim.engines.ray.sweep_ended` or the end
        of :func:`fedsim.engines.ray.shared_ray`)."""
        if _sharing() and self.pool is not None and _WARM.get("pool") is self.pool:
            if _idle(self.pool):
                return
            _WARM.clear()
        super().terminate()

    def _replace(self, future: object, kill: bool) -> None:
        """Drop the actor that ran ``future`` (killing it first) and start a fresh one, first in
        the idle list (``pop()`` hands out the last: warm actors go first)."""
        pool = self.pool
        assert pool is not None
        actor = pool._future_to_actor.pop(future)
        if kill:
            ray.kill(actor, no_restart=True)
        with self._lock:
            pool.pool.insert(0, pool.create_actor_fn())


# The actors of the last run on a shared Ray: the Ray job they belong to, their resources, the pool
_WARM: dict[str, Any] = {}


def _sharing() -> bool:
    """Inside :func:`fedsim.engines.ray.shared_ray` or a sweep's shared Ray."""
    from fedsim.engines import ray as ray_engine

    return bool(ray_engine._shared)


def _ray_job() -> tuple[str, str]:
    """This Ray and this driver (a Ray started anew has a new node id; job ids restart)."""
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def forget_warm_actors() -> None:
    """The shared Ray is going away: its actors with it."""
    _WARM.clear()


def _idle(pool: Any) -> bool:
    return not pool._future_to_actor and len(pool.pool) == pool.num_actors


def _warm_pool(resources: dict) -> Any:
    """The kept pool, if it belongs to this Ray, asks for the same resources and is idle."""
    pool = _WARM.get("pool")
    if pool is None or _WARM.get("resources") != dict(resources) or _WARM.get("job") != _ray_job():
        _WARM.clear()
        return None
    return pool if _idle(pool) else None


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Flower's Simulation Engine builds :class:`FedsimRayBackend` inside the block (it looks
    ``RayBackend`` up in its module when it starts a run)."""
    saved = raybackend.RayBackend
    raybackend.RayBackend = FedsimRayBackend
    try:
        yield
    finally:
        raybackend.RayBackend = saved
