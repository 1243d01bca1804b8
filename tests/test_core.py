"""The ground floor: TensorFlow's start-up lines are filtered, real warnings and errors are not."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from core.quiet import is_noise

STARTUP = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
           "I0000 00:00:1796207138.944076    3375 port.cc:153] oneDNN custom operations are on. You may see slightly "
           "different numerical results due to floating-point round-off errors from different computation orders. "
           "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
           "I0000 00:00:1796207159.350079    4297 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
           "available CPU instructions in performance-critical operations.",
           "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
           "appropriate compiler flags."]
REAL = ["W0000 00:00:1796207138.944076    3375 port.cc:153] a warning from the same file",
        "E0000 00:00:1796207138.944076    3375 cuda_dnn.cc:8] an error",
        "I0000 00:00:1796207138.944076    3375 some_kernel.cc:9] info from anything but the loader",
        "UserWarning: a Python warning", "Traceback (most recent call last):", "error: DATA=x: no such folder"]


def test_only_the_loaders_start_up_lines_are_noise():
    assert all(is_noise(l) for l in STARTUP)
    assert not any(is_noise(l) for l in REAL)


def _stderr_of(code, env=None):
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def test_the_filter_keeps_everything_but_start_up_lines(tmp_path):
    """A stand-in module that writes, at import, TF's start-up lines and real ones straight to fd 2."""
    pkg = tmp_path / "noisy"
    pkg.mkdir()
    lines = STARTUP + REAL
    (pkg / "__init__.py").write_text("import os, warnings\n" + "".join(f"os.write(2, {(l + chr(10)).encode()!r})\n"
                                                                         for l in lines)
                                     + "warnings.warn('kept as well')\n")
    err = _stderr_of("import sys; sys.path.insert(0, %r); from core import quiet; quiet.install('noisy'); "
                     "import noisy" % str(tmp_path))
    assert [l for l in REAL if l in err] == REAL, err
    assert "kept as well" in err and not any(l in err for l in STARTUP), err


@pytest.mark.slow
@pytest.mark.parametrize("onednn", ["0", "1"])
def test_importing_tensorflow_prints_nothing(onednn):
    env = {"TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "0"}  # the most TF would print
    loud = _stderr_of("import tensorflow", env)
    quiet = _stderr_of("import core, tensorflow as tf; tf.constant(1.0) + 1", env)
    assert quiet == "", quiet
    if onednn == "1":  # the lines the filter exists for: TF prints them with oneDNN's custom operations on
        assert "oneDNN custom operations are on" in loud and "absl::InitializeLog" in loud, loud
