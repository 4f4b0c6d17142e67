"""Runs over several machines: caches that are not shared between them, and a machine that is lost mid-run.

- `data_ranks`: who prepares the data. With one cache seen by every machine, all ranks share the tokenization
  (as on one machine); when a machine cannot see what rank 0 writes into the cache (node-local disks), each
  machine prepares its own copy with its own ranks, and `DataRanks.agree` checks the copies are the same.
- `watch_machines`: while training, one process per machine keeps a heartbeat in the launcher's store
  (torchrun's TCPStore, the one the rendezvous used) and watches the others'. A machine whose processes are
  killed closes its sockets and the collectives fail at once; one that hangs, loses power or network keeps its
  connections open, and only a timeout ends the wait (the collectives': `training.ddp_timeout`, 30 minutes by
  default, which llmkit leaves alone: a finetune's tokenization waits under it). A machine silent for
  `machine_timeout` seconds (MACHINE_TIMEOUT_S, or `training.ddp_timeout` when it is set) is reported by machine and
  ranks, with how to resume, and this process stops. The heartbeat is a thread: slow work (a long checkpoint, an
  evaluation) does not silence it; a frozen, dead or cut-off machine does.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmkit.console import log
from llmkit.errors import DataError, RunError

DATA_TIMEOUT_S = 24 * 3600  # the data stage may wait this long for the slowest rank's share of tokenization
FINISHED = 1 << 40  # a heartbeat counter past this: the machine finished training (its silence is no loss)
MACHINE_TIMEOUT_S = 180.0  # a machine silent this long during training is lost
STARTUP_GRACE_S = 60.0  # a machine not yet beating (still loading its model) gets this much longer


def machine_count() -> int:
    """Machines of a launched run: processes in all / processes per machine (torchrun sets both)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))))


def machine_rank() -> int:
    """This machine's rank in a launched run (torchrun's GROUP_RANK, accelerate's --machine_rank)."""
    return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))


def machine_timeout(args: Any) -> float:
    """Seconds a machine may be silent before it counts as lost: `training.ddp_timeout` when the run sets it,
    else MACHINE_TIMEOUT_S (HF's default collective timeout, 30 minutes, would hold every GPU that long)."""
    import dataclasses

    from transformers import TrainingArguments

    default = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "ddp_timeout")
    return float(args.ddp_timeout) if args.ddp_timeout != default else MACHINE_TIMEOUT_S


def resume_advice() -> str:
    return ("Resume from the last checkpoint with the same command plus --resume, started on every machine again "
            "(a machine that is lost for good: start the others with --num-machines and --machine-rank renumbered).")


# ---------------------------------------------------------------- the data stage


@dataclass
class DataRanks:
    """The ranks that share the data stage: `rank`/`world`/`barrier` for the tokenizer and the preparation."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None
    group: Any = None  # the run-wide gloo group of the data stage (None: one process)
    per_machine: bool = False  # each machine prepares its own copy
    blind: list[int] = field(default_factory=list)  # machines that cannot see rank 0's cache
    local_group: Any = None  # per machine: this machine's gloo group

    def close(self) -> None:
        if self.local_group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self.local_group)
            self.local_group = None

    @property
    def ranks(self) -> dict[str, Any]:
        return dict(rank=self.rank, world=self.world, barrier=self.barrier)

    def agree(self, manifest: dict[str, Any], what: str = "the prepared data") -> None:
        """Machines that prepared their own copies must hold the same data (tokenizer and tokens): checked."""
        if not self.per_machine:
            return
        import torch.distributed as dist

        summary = {k: manifest.get(k) for k in ("fingerprint", "tokenizer", "splits", "dtype", "held_out")}
        summary["tokenizer"] = dict(summary["tokenizer"] or {}, path=None)
        mine = (machine_rank(), hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest())
        everyone: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(everyone, mine, group=self.group)
        digests = {m: d for m, d in everyone}
        if len(set(digests.values())) > 1:
            other = sorted(m for m, d in digests.items() if d != digests[min(digests)])
            raise DataError(f"The machines prepared different data from the same corpus ({what} of machine(s) "
                            f"{', '.join(map(str, other))} differ from machine 0's: another tokenizer or other "
                            f"tokens). Prepare it once (llmkit prepare ... -o DIR), copy DIR to the same path on "
                            f"every machine and pass --data DIR, or put the cache on a shared filesystem (--set "
                            f"data.cache_dir=DIR or LLMKIT_CACHE=DIR on every machine).")


def data_ranks(args: Any, group: Any, cache: Path | None) -> DataRanks:
    """Who prepares the data of a launched run (see the module's docstring); `group` is the data stage's."""
    from datetime import timedelta

    import torch.distributed as dist

    everyone = DataRanks(args.process_index, args.world_size, lambda: dist.barrier(group=group), group)
    if cache is None or machine_count() == 1:
        return everyone
    blind = machines_not_seeing(cache, group)
    if not blind:
        return everyone
    members: list[Any] = [None] * args.world_size
    dist.all_gather_object(members, machine_rank(), group=group)
    mine = None
    for machine in sorted(set(members)):  # every rank creates every group, in the same order
        ranks = [r for r, m in enumerate(members) if m == machine]
        created = dist.new_group(ranks=ranks, backend="gloo", timeout=timedelta(seconds=DATA_TIMEOUT_S))
        if machine == machine_rank():
            mine, local = created, ranks
    log(f"the cache {cache} is not shared between the machines (machine(s) {', '.join(map(str, blind))} cannot see "
        f"what rank 0 writes there): each machine prepares the data in its own cache. To tokenize once, put the "
        f"cache on a shared filesystem (--set data.cache_dir=DIR or LLMKIT_CACHE=DIR), or prepare ahead with "
        f"`llmkit prepare ... -o DIR` and copy DIR to every machine.")
    return DataRanks(local.index(args.process_index), len(local), lambda: dist.barrier(group=mine), group,
                     per_machine=True, blind=blind, local_group=mine)


def machines_not_seeing(cache: Path, group: Any) -> list[int]:
    """The machines on which a file that rank 0 writes into `cache` does not appear (the cache is not shared)."""
    import uuid

    import torch.distributed as dist

    token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0, group=group)
    marker = cache / f".shared-check-{token[0]}"
    if dist.get_rank() == 0:
        cache.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by rank 0 of a run, to see whether every machine shares this cache\n")
    dist.barrier(group=group)
    seen: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(seen, (machine_rank(), marker.is_file()), group=group)
    dist.barrier(group=group)
    if dist.get_rank() == 0:
        marker.unlink(missing_ok=True)
    return sorted({m for m, ok in seen if not ok})


# ---------------------------------------------------------------- a lost machine


class MachineWatch:
    """A heartbeat per machine in the launcher's store, and a watch on the other machines' (see the docstring)."""

    def __init__(self, timeout_s: float, machines: int, me: int, local_world: int,
                 stop: Callable[[str], None] | None = None):
        from datetime import timedelta

        import torch.distributed as dist

        self.timeout_s, self.machines, self.me, self.local_world = timeout_s, machines, me, local_world
        self.interval = max(0.2, min(5.0, timeout_s / 5))
        self.stop_process = stop or stop_now
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self.store = dist.PrefixStore("llmkit/alive/", dist.TCPStore(
            host, port, is_master=False, timeout=timedelta(seconds=max(1.0, timeout_s)), wait_for_workers=False))
        self.seen = {m: (-1, time.monotonic()) for m in range(machines) if m != me}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, name="llmkit-machine-watch", daemon=True)

    def start(self) -> "MachineWatch":
        self.store.add(str(self.me), 1)  # a first heartbeat before training starts: from now on, silence counts
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.done.wait(self.interval):
            lost = self.check()
            if lost and not self.done.is_set():
                self.stop_process(lost)
                return

    def check(self, within: float | None = None) -> str | None:
        """A message naming the lost machine(s), or None: silent for `within` seconds (default the timeout)."""
        within = self.timeout_s if within is None else within
        try:
            self.store.add(str(self.me), 1)
            counts = {m: self.store.add(str(m), 0) for m in self.seen}
        except (RuntimeError, OSError) as e:  # torch's store errors: machine 0, which holds the store, is unreachable
            return self.message([0], f"the run's store on machine 0 ({os.environ.get('MASTER_ADDR')}:"
                                     f"{os.environ.get('MASTER_PORT')}) stopped answering ({type(e).__name__})")
        now, lost = time.monotonic(), []
        for machine, count in counts.items():
            last, since = self.seen[machine]
            if count != last:
                self.seen[machine] = (count, now)
            elif count < FINISHED and now - since > within + (STARTUP_GRACE_S if count == 0 else 0.0):
                lost.append(machine)
        if lost:
            return self.message(lost, f"no sign of life for {within:.0f} s (hung, powered off or cut off from the "
                                      f"network)")
        return None

    def message(self, machines: list[int], why: str) -> str:
        ranks = ", ".join(f"machine {m} (ranks {m * self.local_world}-{(m + 1) * self.local_world - 1})"
                          for m in machines)
        return f"lost {ranks}: {why}. This run stopped. {resume_advice()}"

    def lost_now(self) -> str | None:
        """After a collective failed: the machine(s) that went silent, if any (waits a few heartbeats)."""
        deadline = time.monotonic() + 4 * self.interval
        while time.monotonic() < deadline:
            message = self.check(within=2 * self.interval)
            if message:
                return message
            time.sleep(self.interval)
        return None

    def finish(self) -> None:
        self.done.set()
        with contextlib.suppress(RuntimeError, OSError):  # the store may be gone already: nobody is left to tell
            self.store.add(str(self.me), FINISHED)


def stop_now(message: str) -> None:
    """Print the loss of a machine and end this process: its collectives may never return."""
    print(f"llmkit: error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


@contextlib.contextmanager
def watch_machines(args: Any):
    """Around training: one watcher per machine (local rank 0), on runs of more than one machine."""
    machines = machine_count()
    if machines <= 1 or args.local_process_index != 0 or "MASTER_ADDR" not in os.environ:
        yield
        return
    watch = MachineWatch(machine_timeout(args), machines, machine_rank(),
                         int(os.environ.get("LOCAL_WORLD_SIZE", "1"))).start()
    try:
        yield
    except RuntimeError as e:  # torch.distributed's errors (DistBackendError, gloo's) are RuntimeErrors
        import torch.distributed as dist

        text = str(e).lower()
        lost = watch.lost_now() if isinstance(e, dist.DistError) or "gloo" in text or "nccl" in text else None
        if lost:
            raise RunError(lost) from e
        raise
    finally:
        watch.finish()
