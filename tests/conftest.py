"""Shared fixtures: small synthetic image sets and a stage-1 cache built from them (offline, WEIGHTS=none, 75x75)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests never depend on a GPU, even where one exists

import core  # noqa: E402,F401  (before anything imports TensorFlow: the quiet start-up, core/quiet.py)
from extract.synth import make_dataset  # noqa: E402

IMG = 75  # the smallest input InceptionV3 accepts: fast, and still exercises every layer


def extract_args(data, features, *extra, precision="float32"):
    """`make features` arguments for the test sets. PRECISION is explicit: these caches are the float32 references
    that tests compare live float32 models with (auto would pick bfloat16 on a CPU with native bf16)."""
    return ["--data", str(data), "--features", str(features), "--img-size", str(IMG), "--weights", "none",
            "--batch", "16", "--precision", precision, *extra]


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory):
    """120 labelled synthetic images in the Kaggle flat layout, plus broken files and junk."""
    d = tmp_path_factory.mktemp("train")
    make_dataset(d, n=120, layout="kaggle", seed=3, broken=4)
    return d


@pytest.fixture(scope="session")
def cache_path(train_dir, tmp_path_factory):
    """A complete stage-1 cache of `train_dir` (mixed7, float32)."""
    return build_cache(train_dir, tmp_path_factory.mktemp("cache") / "features.h5")


def build_cache(data, path, *extra, precision="float32"):
    """`make features` of `data` into `path` (75 px, WEIGHTS=none, BATCH=16, PRECISION=`precision`, `extra` flags),
    in this process."""
    from extract.__main__ import main

    assert main(extract_args(data, path, *extra, precision=precision)) == 0
    return path


HARD = 0.6  # extract.synth difficulty of the harder set: the recipe's head reached 0.75 val accuracy on it, not 1.0


@pytest.fixture(scope="session")
def hard_train_dir(tmp_path_factory):
    """160 labelled synthetic images whose classes overlap (difficulty HARD), Kaggle flat layout."""
    d = tmp_path_factory.mktemp("hard_train")
    make_dataset(d, n=160, layout="kaggle", seed=3, difficulty=HARD)
    return d


@pytest.fixture(scope="session")
def hard_cache_path(hard_train_dir, tmp_path_factory):
    """A complete cache of `hard_train_dir` at mixed7 and mixed6 (what cached fine-tuning needs)."""
    from extract.__main__ import main

    path = tmp_path_factory.mktemp("hard_cache") / "features.h5"
    assert main(extract_args(hard_train_dir, path, "--layers", "mixed7,mixed6")) == 0
    return path


def head_args(features, head_dir, *extra):
    """`make head` arguments for the small test caches: a few epochs at a rate that learns in them."""
    return ["--features", str(features), "--head-dir", str(head_dir), "--epochs", "6", "--lr", "1e-3",
            "--batch", "16", "--seed", "0", *extra]


def error_lines(stderr: str) -> list:
    """The `error:` lines of a command's stderr (a user's mistake gives exactly one, and it comes first)."""
    return [l for l in stderr.splitlines() if l.startswith("error: ")]


def assert_user_error(r, *parts):
    """A CompletedProcess that failed as a user's mistake: exit 2, stderr is one `error:` line holding `parts`."""
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and len(error_lines(r.stderr)) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for part in parts:
        assert part in r.stderr, r.stderr[-3000:]


def run_module(module, *args, env=None, timeout=600):
    """Run `python -m module args` as a real subprocess (as `make` does); return CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def committed_inputs(path) -> int:
    """`inputs_committed` of a cache's .partial while its writer runs (0 when not readable yet).

    HDF5 refuses to open a file that another process has open for writing, so this reads a copy whose write flag
    is cleared (as `h5clear -s` would).
    """
    import shutil

    import h5py

    from cache.integrity import clear_write_flags

    try:
        shutil.copyfile(path, f"{path}.peek")
        clear_write_flags(f"{path}.peek")
        with h5py.File(f"{path}.peek", "r", locking=False) as f:
            return int(f.attrs["inputs_committed"])
    except (OSError, KeyError):
        return 0
