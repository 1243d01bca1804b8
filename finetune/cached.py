"""Cached fine-tuning (FROM_CACHE=1): train the last block and the head on cached features and views of its input.

The block runs from the backbone's cached cut (extract/backbones.py; InceptionV3: mixed6) to its feature layer
(mixed7). Reads FEATURES (a cache with LAYERS=<cut>,<layer>, optionally AUG_VIEWS=K views at the cut), HEAD_DIR and
DATA (only to check the exported model on a few val images). Writes, through finetune/run.py, the same MODEL_DIR as
the end-to-end path: model.keras (loaded by `make predict` and `make submission`), metrics.json, curves.png.
Example: python -m finetune --from-cache 1 --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

Why it is exact: with UNFREEZE_FROM=mixed6 every layer up to mixed6 is frozen and BatchNorm runs in inference mode,
so mixed6's output is a fixed function of the image, which is what the cache holds. The trained network is the
full model's own sub-graph from mixed6 to mixed7 (keras.Model between two of its tensors), so its layers *are* the
full model's layers: training it trains the full model, and exporting is saving that. Only the input differs from
the end-to-end path: each epoch every train image is one view drawn uniformly from its clean features and its K
cached views; validation uses the clean view.
"""
import numpy as np

from cache import CacheMismatch
from classify.data import Feeds, fits, held_bytes
from core import WorkflowError
from extract import ensemble

from . import equivalence, model as fm
from .infer import predict_rows

EXPORT_CHECK_ROWS = 64  # val images the saved model is checked on: a wrong or stale weight moves every prediction,
# so a few dozen catch it, for seconds of full-network inference instead of a pass over the whole val set
VIEW_STREAM = 1  # third seed word of the view draws, so they never reuse epoch_windows' stream (seed, epoch)


def check_cache_layers(cache, unfreeze_from: str, head_layer: str = ""):
    """The cache must hold the features the block reads (UNFREEZE_FROM) and the head's layer (default: its own)."""
    head_layer = head_layer or cache.config["layer"]
    fix = (f"rebuild it with `make features LAYERS={unfreeze_from},{head_layer} AUG_VIEWS=2 FEATURES={cache.path}`, "
           f"then retrain the head on it: `make head LAYER={head_layer} FEATURES={cache.path}`")
    if unfreeze_from not in cache.layers or head_layer not in cache.layers:
        raise CacheMismatch(f"{cache.path}: cached fine-tuning trains the layers from {unfreeze_from} to {head_layer} "
                            f"on cached {unfreeze_from} features and checks them against {head_layer}, but the cache "
                            f"holds {','.join(cache.layers)}; {fix}")


def build_cached_model(model, trunk, unfreeze_from: str):
    """(cached model: UNFREEZE_FROM features -> the head's output, trained layer names), made of `model`'s own layers
    and trainable exactly as stage 3's rule (fm.set_trainable) makes them. Recompile after this."""
    import keras

    names = fm.set_trainable(model, trunk, unfreeze_from)
    src = trunk.get_layer(unfreeze_from).output
    cut = trunk.layers[-1].name
    try:
        # Keras clones the graph nodes between the two tensors and keeps the layer objects: weights are shared.
        block = keras.Model(src, trunk.outputs[0], name=f"{unfreeze_from}_to_{cut}")
    except ValueError as e:
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: the layers after it also read earlier layers, so its "
                            f"output alone cannot feed them ({str(e)[:80]}); use the backbone's default "
                            f"(UNFREEZE_FROM empty)"
                            ) from None
    inp = keras.Input(tuple(src.shape[1:]), name=f"{unfreeze_from}_features")
    cached = keras.Model(inp, model.get_layer("head")(block(inp)), name=f"{unfreeze_from}_features_{cut}_head")
    # The equivalence rests on this: the cached model trains the very variables stage 3 trains, no more, no fewer.
    if {id(v) for v in cached.trainable_weights} != {id(v) for v in model.trainable_weights}:
        raise WorkflowError(f"UNFREEZE_FROM={unfreeze_from}: the layers stage 3 would train are not exactly those "
                            f"between {unfreeze_from} and {cut}; use the backbone's default (UNFREEZE_FROM empty)")
    return cached, names


def hold_views(cache, layer, train_rows, val_rows, mem_budget) -> tuple:
    """(whether the cached path holds its features and views in memory under MEM_BUDGET, the log line that says
    which and why), as stage 2 decides for its features (classify.data.fits)."""
    return fits(ViewFeeds.held_bytes(cache, layer, train_rows, val_rows), mem_budget, "cached fine-tuning data")


class ViewFeeds(Feeds):
    """classify.data.Feeds (chunk-aligned, the same order per seed and epoch) over `layer`, where each epoch every
    train row reads one view drawn uniformly from {clean, its K cached views}; val rows read clean. In memory
    (`in_memory`, see `held_bytes`), the clean rows and every view are read once; streamed, each window is read
    from the cache. Either way the batches are the same, so MEM_BUDGET decides speed and memory, never the weights."""

    def __post_init__(self):
        super().__post_init__()
        self.k = self.cache.n_views(self.layer)
        self.is_train = np.zeros(len(self.cache), bool)
        self.is_train[self.train_rows] = True
        self._draws = (None, None)
        if self.in_memory:  # views[v, view_pos[row]] is view v of train row `row`
            tr = np.sort(self.train_rows)
            self._view_pos = np.full(len(self.cache), -1, np.int64)
            self._view_pos[tr] = np.arange(len(tr))
            self._views = np.empty((self.k, len(tr)) + self.shape, np.float32)
            for v in range(self.k):
                self._views[v] = self.cache.read_views(tr, v, self.layer)

    @staticmethod
    def held_bytes(cache, layer, train_rows, val_rows) -> int:
        """Bytes held in memory: every labelled row's clean features and the K views of each train row."""
        return (held_bytes(cache, np.concatenate([train_rows, val_rows]), layer)
                + cache.n_views(layer) * held_bytes(cache, train_rows, layer))

    def draws(self, epoch: int) -> np.ndarray:
        """Per row: 0 = the clean features, v >= 1 = cached view v - 1. Depends only on (seed, epoch): resumable."""
        if self._draws[0] != epoch:
            d = np.random.default_rng([self.seed, epoch, VIEW_STREAM]).integers(0, self.k + 1, len(self.cache))
            self._draws = (epoch, np.where(self.is_train, d, 0))
        return self._draws[1]

    def read(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        d = self.draws(self.epoch)[rows]
        aug = d > 0
        if not aug.any():
            return super().read(rows)
        x = np.empty((len(rows),) + self.shape, np.float32)
        x[~aug] = super().read(rows[~aug])
        x[aug] = (self._views[d[aug] - 1, self._view_pos[rows[aug]]] if self.in_memory
                  else self.cache.read_views(rows[aug], d[aug] - 1, self.layer))
        return x


class CachedPath:
    """The cached path's part in finetune/run.py's skeleton."""

    name = "cached"
    data_note = None  # set by `datasets`: in memory or streamed under MEM_BUDGET, and why

    def check_cache(self, cache, unfreeze_from):
        if ensemble.is_ensemble(cache.config):
            raise WorkflowError(f"FROM_CACHE=1: {cache.path} is an ensemble cache (BACKBONES), which holds pooled "
                                f"features only; fine-tune it end to end: FROM_CACHE=0")
        spec = fm.spec_of(cache.config)
        if not spec.cached_cut:
            raise WorkflowError(f"FROM_CACHE=1: {spec.name} has no cut the cached path can use ({spec.no_cut_reason}); "
                                f"fine-tune it end to end: FROM_CACHE=0")
        if unfreeze_from not in cache.layers:  # before the head's check: a new cache needs a new head anyway
            check_cache_layers(cache, unfreeze_from)

    def check_head_layer(self, cache, unfreeze_from, head_layer):
        check_cache_layers(cache, unfreeze_from, head_layer)

    def mixed_precision(self, flag: str, gpus) -> bool:
        if flag == "on":
            print("note: cached fine-tuning computes in PRECISION (float32 or bfloat16); MIXED_PRECISION (float16) "
                  "applies to the end-to-end path")
        return False

    def run_fields(self, s, cache) -> dict:
        return {"path": "cached", "aug_views": cache.n_views(s.unfreeze_from),
                "augmentation": cache.config.get("augmentation"),
                "view_draw": "per epoch, each train image: one of {clean, K cached views}, uniform, seeded (SEED, epoch)"}

    def equivalence(self, model, trunk, head_src, cache, record, s):
        cached, _ = build_cached_model(model, trunk, s.unfreeze_from)
        return equivalence.cached_block(cached, head_src, cache, s.unfreeze_from, record.layer, s.batch, record,
                                        s.head_dir)

    def trained(self, tm, tt, unfreeze_from):
        return build_cached_model(tm, tt, unfreeze_from)

    def datasets(self, cache, s, tr, va, replicas):
        in_memory, self.data_note = hold_views(cache, s.unfreeze_from, tr, va, s.mem_budget)
        print(self.data_note)
        # Stage 3's batch rule (finetune/train.py): whole training batches; validation too on several replicas.
        feeds = ViewFeeds(cache, s.unfreeze_from, tr, va, s.batch, s.seed, 1.0, in_memory, pad_last=True)
        self.feeds = feeds
        return feeds.train(), feeds.val(pad=replicas > 1), feeds

    def describe(self, s, cache, tr) -> str:
        return (f"on {len(tr)} images x (clean + {self.feeds.k} cached views) of {s.unfreeze_from} {self.feeds.shape}, "
                f"{self.feeds.source} ({cache.path})")

    def evaluate(self, model, trunk, cache, s, va, reference=None):
        """(val labels, P after training, extra metrics) of the exported `model` (one device, its precision).

        The export check runs on `reference` (the trained weights in the cache's precision; default `model`): in
        the precision the cached features were computed in, the full model and the cached block agree to
        RELOAD_TOL, while across precisions they differ by the cache's bf16 rounding."""
        cached, _ = build_cached_model(model, trunk, s.unfreeze_from)
        p_after = predict_rows(cached, cache, s.unfreeze_from, va, s.batch)
        ref, ref_trunk = reference or (model, trunk)
        ref_cached = cached if ref is model else build_cached_model(ref, ref_trunk, s.unfreeze_from)[0]
        export = (equivalence.exported(ref, ref_cached, cache, s.unfreeze_from, s.data, s.batch, EXPORT_CHECK_ROWS)
                  if s.data else None)
        return cache.labels[va], p_after, {"path": "cached", "export_check": export}

    def curves_title(self, s, cache) -> str:
        return (f"cached fine-tuning from {s.unfreeze_from} (clean + {self.feeds.k} views), LR {s.lr:g}, "
                f"{cache.config['image_size']}px, {cache.config['weights']} weights")
