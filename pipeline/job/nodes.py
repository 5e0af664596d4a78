"""The align job on a cluster: which node did each chunk, and what the driver does when a node dies.

* :func:`tag_node` / :func:`keep_node` carry the node id of the detector actor that ran a chunk
  through the write task to the driver (column :data:`NODE_COLUMN`), so the summary can say how
  the photos were spread (``photos_per_node``).
* :func:`watch_progress` guards the driver's loop over the dataset. Ray retries the tasks and
  restarts the actors of a lost node, but the plan was made for the cluster as it was: on what is
  left, the restarted actors and the read tasks may wait for each other's CPUs forever (seen with
  a 1-CPU head left alone). Once a node that was alive at the start has died and no record has
  arrived for ``stall_s`` seconds, it raises :class:`NodeLostError`; the records written so far
  stay, and rerunning the same command plans for the nodes that remain and resumes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

__all__ = ["NODE_COLUMN", "NODE_LOSS_STALL_S", "NodeLostError", "alive_nodes", "keep_node", "tag_node",
           "watch_progress"]

NODE_COLUMN = "node"
NODE_LOSS_STALL_S = 120.0
"""Default: how long the job waits for progress after losing a node before it stops."""

T = TypeVar("T")


class NodeLostError(RuntimeError):
    """A node of the Ray cluster died and the job stopped making progress; rerun to resume."""

    def __init__(self, lost: Iterable[str], stall_s: float) -> None:
        self.lost = sorted(lost)
        self.stall_s = stall_s
        names = ", ".join(n[:12] for n in self.lost)
        super().__init__(f"lost Ray node(s) {names} and no photo finished for {stall_s:.0f} s since: stopped. "
                         "Finished photos are recorded; rerun the same command to resume on the nodes left")


def current_node() -> str:
    """The Ray node id of the calling worker (``""`` outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def tag_node(predictor: type) -> type:
    """``predictor`` (a Ray Data callable class whose ``__call__`` returns a ``pyarrow.Table``)
    with a :data:`NODE_COLUMN` column added to its output: the node its actor runs on. The name
    stays the same (Ray names the actors after it)."""

    class NodeTagged(predictor):
        def __call__(self, batch: dict[str, np.ndarray]):
            import pyarrow as pa

            table = super().__call__(batch)
            return table.append_column(NODE_COLUMN, pa.array([current_node()] * table.num_rows, pa.string()))

    NodeTagged.__name__, NodeTagged.__qualname__ = predictor.__name__, predictor.__qualname__
    NodeTagged.__doc__ = predictor.__doc__
    return NodeTagged


def keep_node(write: Callable[..., Any]) -> Callable[..., Any]:
    """A write function (batch -> ``pyarrow.Table``, one row per record) that also passes the
    batch's :data:`NODE_COLUMN` on (one chunk, one node: its first row's)."""

    def write_keeping_node(batch: dict[str, np.ndarray], **kwargs: Any):
        import pyarrow as pa

        table = write(batch, **kwargs)
        nodes = batch.get(NODE_COLUMN)
        node = str(nodes[0]) if nodes is not None and len(nodes) else ""
        return table.append_column(NODE_COLUMN, pa.array([node] * table.num_rows, pa.string()))

    write_keeping_node.__name__ = write.__name__
    write_keeping_node.__qualname__ = write.__qualname__
    return write_keeping_node


def alive_nodes() -> set[str]:
    """Ids of the cluster's live nodes (a GCS query)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _abandon_ray_calls() -> None:
    """The iteration thread stays blocked in Ray when the job gives up; once the job shuts Ray
    down, its next Ray call would start or join a Ray of its own (Ray's public calls run
    ``ray.init()`` by themselves). Turn that off for this process: the call then fails, quietly,
    in a thread nobody waits for."""
    try:
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False
    except (ImportError, AttributeError):  # another Ray version: at worst a stray connection
        pass


def watch_progress(batches: Iterable[T], *, stall_s: float = NODE_LOSS_STALL_S, poll_s: float = 2.0,
                   nodes: Callable[[], set[str]] = alive_nodes,
                   abandon: Callable[[], None] = _abandon_ray_calls) -> Iterator[T]:
    """Yield ``batches`` (consumed in a helper thread, so that the wait can be bounded).

    While no batch arrives, every ``poll_s`` seconds the live nodes are compared with those at the
    start; once one is gone and neither a batch nor a newly lost node came for ``stall_s`` seconds,
    :class:`NodeLostError` is raised (after ``abandon()``: the helper thread is left behind).
    Without a lost node it waits as long as the work takes. Errors of the iteration are re-raised
    here.
    """
    if stall_s <= 0:
        raise ValueError(f"stall_s must be > 0, got {stall_s}")
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        handoff.put(("batch", item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            handoff.put(("error", exc))

    at_start = nodes()
    threading.Thread(target=pump, name="align-job-batches", daemon=True).start()
    lost: set[str] = set()
    since = time.monotonic()  # the last batch, or the last node found lost
    try:
        while True:
            try:
                kind, item = handoff.get(timeout=poll_s)
            except queue.Empty:
                gone = at_start - nodes() - lost
                if gone:
                    lost |= gone
                    since = time.monotonic()
                if lost and time.monotonic() - since > stall_s:
                    abandon()
                    raise NodeLostError(lost, stall_s) from None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise item
            since = time.monotonic()
            yield item
    finally:
        stop.set()
