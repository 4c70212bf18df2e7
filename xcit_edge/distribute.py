"""The source model under a `tf.distribute` strategy: one code path for a Cloud TPU, GPUs or CPU devices.

`reference` runs here. Only the strategy differs between devices:

* `tpu`: `TPUClusterResolver` (`tpu="local"` on a TPU VM, or a TPU name with zone/project) ->
  `tf.config.experimental_connect_to_cluster` -> `tf.tpu.experimental.initialize_tpu_system` ->
  `TPUStrategy`. The SavedModel is loaded under the strategy with
  `LoadOptions(experimental_io_device="/job:localhost")`, so the host reads the files even when the
  TPU workers cannot see them.
* `gpu`: `MirroredStrategy` over every visible GPU (`OneDeviceStrategy` for one).
* `cpu`: `OneDeviceStrategy("/cpu:0")`, or `MirroredStrategy` over N logical CPU devices
  (`replicas`): the same distributed path a pod slice takes, testable without one.

Inputs go through `tf.data` with static shapes (TPUs need them): the last global batch is padded
and every example carries its index, so the padding is dropped and the outputs come back in input
order whatever order the replicas return them in.

Precision: `highest` turns TensorFloat-32 execution off before anything is traced. TensorFlow's XLA
bridge then emits `operand_precision={highest,highest}` on matmuls and convolutions (TensorFlow's own
`tensorflow/compiler/tests/tensor_float_32_test.py` asserts exactly that in the HLO; on TPU this is
full float32 instead of bfloat16 passes); on GPUs it disables TF32 tensor cores. `default` keeps the
device's default (reduced precision on TPU).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xcit_edge.errors import UsageError, first_line

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu", "tpu")
PRECISIONS = ("default", "highest")
TPU_CONNECT_TIMEOUT = 45.0  # seconds: an unreachable TPU must fail within a minute


@dataclass
class Placement:
    """A strategy and what it runs on (recorded in the reference's provenance)."""

    strategy: object
    device: str
    replicas: int
    description: str


def set_precision(precision: str) -> None:
    """`highest`: TF32 off, i.e. HIGHEST matmul/conv precision under XLA (TPU) and no TF32 on GPUs."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {' or '.join(PRECISIONS)})")
    tf.config.experimental.enable_tensor_float_32_execution(precision != "highest")


def split_cpu(replicas: int) -> None:
    """Split the host CPU into `replicas` logical devices (before TensorFlow runs anything)."""
    import tensorflow as tf

    if replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as e:  # TensorFlow already initialized its devices in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have != replicas:
            raise UsageError(f"cannot split the CPU into {replicas} devices in this process ({e}); "
                             "run the command in a fresh process") from e


def _tpu(tpu: str | None, zone: str | None, project: str | None, timeout: float) -> Placement:
    import tensorflow as tf

    name = tpu or "local"

    def connect():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name, zone=zone, project=project)
        if name != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver

    # A daemon thread, not an executor: a connection that never answers must not keep the process
    # alive at exit (executor threads are joined at interpreter shutdown).
    result: dict = {}

    def attempt():
        try:
            result["resolver"] = connect()
        except Exception as e:  # noqa: BLE001 - handed to the caller below
            result["error"] = e

    worker = threading.Thread(target=attempt, name="tpu-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise UsageError(f"TPU {name!r}: no answer within {timeout:.0f} s (check --tpu, --zone, --project "
                         "and that this host can reach it)")
    if "error" in result:  # the resolver and the TPU runtime raise ValueError, RuntimeError, NotFoundError...
        e = result["error"]
        raise UsageError(f"TPU {name!r} is not reachable: {first_line(e)}") from e
    resolver = result["resolver"]
    strategy = tf.distribute.TPUStrategy(resolver)
    return Placement(strategy, "tpu", strategy.num_replicas_in_sync,
                     f"TPU {name} ({strategy.num_replicas_in_sync} cores)")


def make_placement(device: str = "cpu", *, tpu: str | None = None, zone: str | None = None,
                   project: str | None = None, replicas: int = 1, timeout: float | None = None) -> Placement:
    """The strategy for `device` (see the module doc)."""
    import tensorflow as tf

    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r} (use {', '.join(DEVICES)})")
    if device == "tpu":
        return _tpu(tpu, zone, project, TPU_CONNECT_TIMEOUT if timeout is None else timeout)
    if tpu:
        raise UsageError("--tpu needs --device tpu")
    if device == "gpu":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not gpus:
            raise UsageError("--device gpu: TensorFlow sees no GPU here (tensorflow-cpu, or no CUDA driver)")
        strategy = tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.OneDeviceStrategy(gpus[0])
        return Placement(strategy, "gpu", len(gpus), f"{len(gpus)} GPU(s)")
    split_cpu(replicas)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")][: max(replicas, 1)]
    if len(cpus) > 1:
        return Placement(tf.distribute.MirroredStrategy(cpus), "cpu", len(cpus), f"{len(cpus)} logical CPU devices")
    return Placement(tf.distribute.OneDeviceStrategy("/cpu:0"), "cpu", 1, "CPU")


def load_serving(path: Path, placement: Placement, signature: str, input_name: str, output_key: str):
    """The SavedModel's serving function, loaded under the strategy (host-side IO for TPU workers)."""
    import tensorflow as tf

    options = tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
    with placement.strategy.scope():
        loaded = tf.saved_model.load(str(path), options=options)
    fn = loaded.signatures[signature]

    def serve(x):
        return fn(**{input_name: x})[output_key]

    serve.loaded = loaded  # keep the variables alive as long as the function
    return serve


def replica_batch(placement: Placement, global_batch: int) -> int:
    """`global_batch` rounded up to a multiple of the replicas (at least one image each)."""
    replicas = placement.strategy.num_replicas_in_sync
    global_batch = max(global_batch, replicas)
    return global_batch + (-global_batch) % replicas


def run_distributed(placement: Placement, fn, batches: Iterable[np.ndarray], n: int, global_batch: int,
                    progress=None) -> np.ndarray:
    """`fn` over `n` inputs on every replica: static-shape batches of `global_batch` (rounded up to a
    multiple of the replicas; the last one padded); outputs gathered to the host, in input order.

    The inputs come as `batches`, consecutive chunks of any size (a multiple of the global batch keeps
    every step full), so a 50,000-image run holds one chunk of inputs and the outputs, never all inputs."""
    import tensorflow as tf

    strategy = placement.strategy
    global_batch = replica_batch(placement, global_batch)

    @tf.function
    def step(batch):
        images, index = batch
        return strategy.run(lambda a, b: (fn(a), b), args=(images, index))

    result, done = None, 0
    for x in batches:
        pad = (-len(x)) % global_batch
        xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        ids = np.arange(done, done + len(xp), dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((xp, ids)).batch(global_batch, drop_remainder=True)
        for batch in strategy.experimental_distribute_dataset(ds):
            out, index = step(batch)
            out, index = strategy.gather(out, axis=0).numpy(), strategy.gather(index, axis=0).numpy()
            if result is None:
                result = np.empty((n, *out.shape[1:]), np.float32)
            keep = index < done + len(x)
            result[index[keep]] = out[keep]
            if progress:
                progress(min(done + len(x), int(index.max()) + 1), n)
        done += len(x)
    if result is None or done != n:
        raise ValueError(f"run_distributed: {done} inputs for {n}")
    return result
