"""How the bench times things: medians, per-epoch seconds, child processes' peak RSS, and the machine it ran on.

Reads /proc/cpuinfo. Writes nothing. Example: python -c "from bench.timing import machine; print(machine())"
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from core.versions import package_versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "platform": platform.platform(),
            "versions": package_versions()}


def median(xs):
    return float(statistics.median(xs))


class EpochTimer:
    """Keras callback collecting wall seconds per epoch (epoch 0 includes tracing: excluded by the caller)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.t0)

        return _Timer()


def run_head_cli(cache_path, head_dir, *extra) -> tuple:
    """`python -m classify` as a child process; return (metrics.json, peak RSS in MiB of that child alone)."""
    import tempfile

    cmd = [sys.executable, "-m", "classify", "--features", cache_path, "--head-dir", head_dir, "--seed", "0", *extra]
    # stderr to a file, not a pipe: nobody reads a pipe during wait4, and a full one would block the child.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only, unlike RUSAGE_CHILDREN
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
    with open(os.path.join(head_dir, "metrics.json")) as f:
        return json.load(f), usage.ru_maxrss / 1024  # Linux reports KiB


def read_history_seconds(head_dir):
    import csv

    with open(os.path.join(head_dir, "history.csv")) as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]
