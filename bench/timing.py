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


def steady_epoch_s(seconds) -> float:
    """An epoch's cost without tracing: the median epoch after the first (which also traces the steps), or the only
    epoch when there is one."""
    return median(seconds[1:]) if len(seconds) > 1 else float(seconds[0])


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


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM, the high-water mark of its own memory, which starts afresh at exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# `python -m classify` that writes its own VmHWM to argv[1] as it exits. Not wait4's or RUSAGE_CHILDREN's ru_maxrss:
# Linux keeps ru_maxrss across exec, so a child started by the bench (GBs by then) read as large as the bench itself.
_HEAD_WITH_RSS = """import atexit, runpy, sys
from bench.timing import peak_rss_mib
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(repr(peak_rss_mib())))
sys.argv[0] = "classify"
runpy.run_module("classify", run_name="__main__", alter_sys=True)
"""


def run_head_cli(cache_path, head_dir, *extra) -> tuple:
    """`python -m classify` as a child process; return (metrics.json, peak RSS in MiB of that child alone)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rss_file = os.path.join(tmp, "vmhwm")
        cmd = [sys.executable, "-c", _HEAD_WITH_RSS, rss_file, "--features", cache_path, "--head-dir", head_dir,
               "--seed", "0", *extra]
        # stderr to a file, not a pipe: nobody reads a pipe while we wait, and a full one would block the child.
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                                  stderr=err, text=True)
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"python -m classify {' '.join(cmd[4:])} failed:\n{err.read()[-2000:]}")
        with open(rss_file) as f:
            rss = float(f.read())
    with open(os.path.join(head_dir, "metrics.json")) as f:
        return json.load(f), rss


def read_history_seconds(head_dir):
    import csv

    with open(os.path.join(head_dir, "history.csv")) as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]
