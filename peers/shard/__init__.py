"""EdgeShard: one peer's model split across nearby devices (issue 5).

* :mod:`peers.shard.planner` — pure: device/link/model profiles, the dynamic program that picks
  devices and contiguous layer ranges (latency or pipeline-throughput objective), brute force
  and baselines;
* :mod:`peers.shard.profiles` — pure: shapes and fitted cost profiles of SmolLM2 and Gemma3;
* :mod:`peers.shard.devices` — pure: device files (devices, links, each worker's address and id);
* :mod:`peers.shard.model` — run a real model by layer ranges (``ShardRunner``, ``ShardedModel``);
* :mod:`peers.shard.protocol` — sans-I/O messages between the driving peer and its workers;
* :mod:`peers.shard.worker` — a worker process serving a layer range over authenticated links;
* :mod:`peers.shard.driver` — generation through workers, re-planning and replay on failure;
* :mod:`peers.shard.engine` — ``ShardedEngine``: a peer's ``AnswerEngine`` whose model runs on workers;
* :mod:`peers.shard.cli` — ``multillmn shard plan`` (pure).

Only the pure planning API is re-exported here, so that importing the package needs no torch.
"""

from .devices import DeviceEntry, DeviceFileError, load_device_file
from .planner import (
    DRIVER,
    OBJECTIVES,
    Device,
    Link,
    ModelProfile,
    Network,
    NoFeasiblePlan,
    Objective,
    Plan,
    Problem,
    Shard,
    baselines,
    brute_force,
    evaluate,
    plan,
)
from .profiles import KNOWN_SHAPES, ModelShape, profile_from_shape

__all__ = [
    "DeviceEntry",
    "DeviceFileError",
    "load_device_file",
    "DRIVER",
    "OBJECTIVES",
    "Device",
    "Link",
    "ModelProfile",
    "Network",
    "NoFeasiblePlan",
    "Objective",
    "Plan",
    "Problem",
    "Shard",
    "baselines",
    "brute_force",
    "evaluate",
    "plan",
    "KNOWN_SHAPES",
    "ModelShape",
    "profile_from_shape",
]
