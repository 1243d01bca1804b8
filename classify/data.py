"""Stage 2's data path: cached features into numpy (pooled, for the baseline) and into tf.data (for the head).

Reads the cache only through `cache/` (`FeatureCache.read`, chunk-aligned). Writes nothing.
Example: python -c "from classify.data import parse_bytes; print(parse_bytes('2G'))"

Both training paths follow `cache.epoch_windows(seed, epoch)`: in memory, windows index an array loaded once;
streaming, each window is one chunk-aligned read. Batches are cut from the concatenated windows by the same
generator, so the same seed gives the same batches, hence the same weights, either way.
"""
import math
import re
from dataclasses import dataclass, field

import numpy as np

from cache import epoch_windows
from core import WorkflowError
from core.pipeline import fixed_pipeline

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
HELD_DTYPE = np.float32  # what `FeatureCache.read` returns, whatever the cache stores


def parse_bytes(text) -> int:
    """'2G' -> 2147483648; K/M/G/T are powers of 1024, a bare number is bytes ('auto': see resolve_budget)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise WorkflowError(f"MEM_BUDGET={text!r}: expected auto, bytes or a number with K, M or G, e.g. MEM_BUDGET=2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


AUTO = "auto"
# MEM_BUDGET=auto holds the features when they take at most this share of the memory available now: the rest is
# room for the run (TensorFlow, the head and Adam's moments, the windows being cut, the OS's page cache).
AUTO_SHARE = 0.5


def available_bytes() -> int:
    """Memory the OS can give this process now without swapping (psutil: MemAvailable on Linux)."""
    import psutil

    return int(psutil.virtual_memory().available)


def resolve_budget(text) -> tuple:
    """MEM_BUDGET as (bytes, the words that say where that figure comes from); 'auto': AUTO_SHARE of what is free."""
    if str(text).strip().lower() == AUTO:
        free = available_bytes()
        return int(AUTO_SHARE * free), (f"auto: {AUTO_SHARE:g} of the {free / 2**20:,.0f} MiB available now, the rest "
                                        f"left for the run")
    budget = parse_bytes(text)
    return budget, f"{budget / 2**20:,.1f} MiB"


def hold_in_memory(cache, rows, layer, mem_budget) -> tuple:
    """(whether stage 2 holds `rows` of `layer` in memory under MEM_BUDGET, the log line that says which and why).
    Either way the batches are the same (Feeds), so this decides speed and memory, never the weights."""
    return fits(held_bytes(cache, rows, layer), mem_budget, "head data")


def fits(held: int, mem_budget, what: str) -> tuple:
    """(whether `held` bytes fit MEM_BUDGET, the log line '<what>: N MiB of features, MEM_BUDGET ... -> ...')."""
    budget, why = resolve_budget(mem_budget)
    in_memory = held <= budget
    return in_memory, (f"{what}: {held / 2**20:,.1f} MiB of features, MEM_BUDGET {why} -> "
                       f"{'in memory' if in_memory else 'streamed in chunk-aligned windows'}")


def held_bytes(cache, rows, layer) -> int:
    """Bytes that `rows` take once read (float32), whatever dtype the cache stores them in."""
    stored = cache.features(layer).dtype.itemsize
    return cache.nbytes(rows, layer) * np.dtype(HELD_DTYPE).itemsize // stored


def pool_and_scale(cache, layer, rows, train_rows, desc="pool"):
    """One pass over `rows`, a window of chunks at a time; returns (sorted rows, their global-average-pooled
    features (n, c), the RMS of the train rows' feature values: the scale the head's inputs are divided by)."""
    from tqdm import tqdm

    rows = np.sort(np.asarray(rows, np.int64))
    is_train = np.zeros(len(cache), bool)
    is_train[train_rows] = True
    pooled = np.empty((len(rows), cache.feature_shape(layer)[-1]), np.float32)
    sum_sq, count = 0.0, 0
    # epoch_windows is used only for its chunk-aligned windows (one read each); their order does not matter here.
    for w in tqdm(epoch_windows(rows, cache.chunk_rows(layer), 0, 0), desc=f"{desc} {layer}", unit="window"):
        x = cache.read(w, layer)
        pooled[np.searchsorted(rows, w)] = x.mean(axis=(1, 2))
        t = x[is_train[w]]
        sum_sq += float(np.square(t, dtype=np.float64).sum())
        count += t.size
    scale = math.sqrt(sum_sq / count) if count else 0.0
    if not scale > 0:
        raise WorkflowError(f"{cache.path}: every train feature at layer {layer!r} is zero, so nothing can be "
                            f"learned from it; rerun `make features FEATURES={cache.path}` (check WEIGHTS)")
    return rows, pooled, scale


def hold(cache, layer, train_rows, val_rows) -> tuple:
    """(every labelled row in cache order, read once, position of each cache row in it or -1): what Feeds index when
    in memory. A sweep's trials share one: when each trial read its own, 25,000 rows ran 24 GB out of memory."""
    rows = np.sort(np.concatenate([train_rows, val_rows]))
    pos = np.full(len(cache), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    return cache.read(rows, layer), pos


@dataclass
class Feeds:
    """Train and val batches of (features / scale, label) as tf.data, from memory or streamed from the cache."""

    cache: object
    layer: str
    train_rows: np.ndarray
    val_rows: np.ndarray
    batch: int
    seed: int
    scale: float
    in_memory: bool
    epoch: int = 0  # set by the training loop before each epoch's iterator starts (core.runs: the EpochClock callback)
    # Stage 3's batch rule for training (extract.pipeline.labelled_dataset): every batch exactly `batch` rows, the last
    # padded with zero-weight rows, as (x, y, weight). Off for stage 2, whose last batch stays short and unweighted.
    pad_last: bool = False
    # in_memory: the rows already held (`hold`), e.g. shared by a sweep's trials; None: read them here
    held: tuple = field(default=None, repr=False)

    def __post_init__(self):
        self.shape = tuple(self.cache.feature_shape(self.layer))
        self.chunk_rows = self.cache.chunk_rows(self.layer)
        self.labels = self.cache.labels.astype(np.float32)
        if self.in_memory:
            self._array, self._pos = self.held or hold(self.cache, self.layer, self.train_rows, self.val_rows)
        # Prefetch about one window of batches: the next window is read while the model eats this one,
        # and memory stays bounded by two windows whatever the cache's size.
        window_rows = max(len(w) for w in self.train_windows())
        self.prefetch = max(2, math.ceil(window_rows / self.batch) + 1)
        self.val_order = np.concatenate(self.val_windows())

    @property
    def source(self) -> str:
        return "in memory" if self.in_memory else "streamed"

    def read(self, rows) -> np.ndarray:
        return self._array[self._pos[rows]] if self.in_memory else self.cache.read(rows, self.layer)

    def train_windows(self):
        return epoch_windows(self.train_rows, self.chunk_rows, self.seed, self.epoch)

    def val_windows(self):
        # A fixed order (epoch 0 of the seed): validation needs chunk-aligned reads, not shuffling.
        return epoch_windows(self.val_rows, self.chunk_rows, self.seed, 0)

    def _batches(self, windows, inv_scale, pad):
        """Exact batches of `self.batch` rows cut across window borders; only the last may be short (or padded)."""
        batches = self._cut(windows, inv_scale)
        if not pad:
            yield from batches
            return
        for x, y in batches:
            n, k = len(x), self.batch - len(x)
            w = np.concatenate([np.ones(n, np.float32), np.zeros(k, np.float32)])
            yield (np.concatenate([x, np.zeros((k,) + x.shape[1:], x.dtype)]),
                   np.concatenate([y, np.zeros((k, 1), y.dtype)]), w)

    def _cut(self, windows, inv_scale):
        carry_x, carry_y = np.empty((0,) + self.shape, np.float32), np.empty((0, 1), np.float32)
        for w in windows:
            x = self.read(w)  # a fresh array in both paths, so scaling in place is safe
            x *= inv_scale
            x = np.concatenate([carry_x, x])
            y = np.concatenate([carry_y, self.labels[w, None]])
            full = len(x) - len(x) % self.batch
            for i in range(0, full, self.batch):
                yield x[i:i + self.batch], y[i:i + self.batch]
            carry_x, carry_y = x[full:], y[full:]
        if len(carry_x):
            yield carry_x, carry_y

    def _dataset(self, windows_fn, n_rows, raw=False, pad=False):
        import tensorflow as tf

        inv = np.float32(1.0) if raw else np.float32(1.0 / self.scale)
        n = self.batch if pad else None  # a static batch size: each of N replicas gets batch / N rows
        spec = (tf.TensorSpec((n,) + self.shape, tf.float32), tf.TensorSpec((n, 1), tf.float32))
        if pad:
            spec += (tf.TensorSpec((n,), tf.float32),)
        # windows_fn runs when an iterator starts, i.e. after on_epoch_begin has set self.epoch.
        ds = tf.data.Dataset.from_generator(lambda: self._batches(windows_fn(), inv, pad), output_signature=spec)
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n_rows / self.batch)))
        return fixed_pipeline(ds, self.prefetch)

    def train(self):
        """Shuffled every epoch (the order of `epoch_windows` for `self.epoch`), divided by the feature scale."""
        return self._dataset(self.train_windows, len(self.train_rows), pad=self.pad_last)

    def val(self, raw=False, pad=False):
        """Val rows in `self.val_order`; `raw=True` leaves them unscaled, as the saved head will see them; `pad`
        fills the last batch with zero-weight rows (needed on several replicas)."""
        return self._dataset(self.val_windows, len(self.val_rows), raw, pad)
