"""HEAD_DIR, the contract between stage 2 and stage 3: written here by `make head`, read here by `make finetune`.

Reads and writes HEAD_DIR: head.keras (the best head, taking raw cached features), baseline.joblib, history.csv,
curves.png, and metrics.json, written last (layout: README, "HEAD_DIR"). Where metrics.json exists, the other files
belong to it; `begin` removes it when a run starts.
Example: python -c "from classify.record import read_metrics; print(read_metrics('artifacts/head')['head'])"
"""
import json
import os
from dataclasses import dataclass

from cache import CacheMismatch
from core import WorkflowError
from core.files import file_hash, replacing, write_json

from .head import read_head_config

HEAD_FILE, BASELINE_FILE, METRICS_FILE = "head.keras", "baseline.joblib", "metrics.json"
HISTORY_FILE, CURVES_FILE = "history.csv", "curves.png"


class HeadMismatch(WorkflowError):
    """HEAD_DIR is missing, incomplete or was trained on another cache."""


@dataclass(frozen=True)
class HeadRecord:
    """What stage 3 needs to know of a head: where it is, the cache it was trained on, and its recorded scores."""

    head_dir: str
    cache_path: str
    fingerprint: str
    layer: str
    feature_shape: tuple
    val_accuracy: float = None
    val_log_loss: float = None
    head: dict = None  # kind, units, dropout: what build_head rebuilds (classify.head.read_head_config)

    @property
    def head_file(self) -> str:
        return os.path.join(self.head_dir, HEAD_FILE)

    def sha256(self) -> str:
        return file_hash(self.head_file)

    def as_dict(self) -> dict:
        """As recorded in stage 3's config (`head_cache`)."""
        out = {"path": self.cache_path, "fingerprint": self.fingerprint, "layer": self.layer,
               "feature_shape": list(self.feature_shape)}
        out.update({k: getattr(self, k) for k in ("val_accuracy", "val_log_loss", "head") if getattr(self, k) is not None})
        return out


def begin(head_dir):
    """A run starts: HEAD_DIR holds no finished run until metrics.json is written again."""
    os.makedirs(head_dir, exist_ok=True)
    path = os.path.join(head_dir, METRICS_FILE)
    if os.path.exists(path):
        os.remove(path)


def cache_block(cache, layer) -> dict:
    """metrics.json's `cache` block: the cache the head was trained on (stage 3 refuses any other)."""
    cfg = cache.config
    return {"path": os.path.abspath(cache.path), "fingerprint": cache.fingerprint, "layer": layer,
            "feature_shape": list(cache.feature_shape(layer)), "backbone": cfg.get("backbone"),
            "image_size": cfg.get("image_size"), "weights_sha256": cfg.get("weights_sha256"),
            **{k: cfg[k] for k in ("backbone_entry", "backbone_args") if k in cfg}}  # a width of MobileNet


def save_head(head_dir, head):
    """head.keras, atomically."""
    with replacing(os.path.join(head_dir, HEAD_FILE)) as tmp:
        head.save(tmp)


def save_outputs(head_dir, head, history, title: str):
    """head.keras, history.csv and curves.png of a trained head (metrics.json comes after them, last)."""
    from core.curves import save_curves
    from core.runs import write_history

    save_head(head_dir, head)
    write_history(os.path.join(head_dir, HISTORY_FILE), history)
    save_curves(os.path.join(head_dir, CURVES_FILE), history, title)


def load_baseline(head_dir):
    """baseline.joblib as saved (HeadMismatch with the fix when it is missing)."""
    import joblib

    path = os.path.join(head_dir, BASELINE_FILE)
    if not os.path.isfile(path):
        raise HeadMismatch(f"HEAD_DIR={head_dir}: no {BASELINE_FILE}; rerun `make head HEAD_DIR={head_dir}`")
    return joblib.load(path)


def save_baseline(head_dir, model):
    """baseline.joblib, atomically."""
    import joblib

    with replacing(os.path.join(head_dir, BASELINE_FILE)) as tmp:
        joblib.dump(model, tmp)


def metrics_doc(head: dict, baseline, cache, layer, config: dict) -> dict:
    """metrics.json's content: `head` and `baseline` blocks (core.metrics.val_keys + run figures; the baseline is
    null for a sweep trial), `cache`, and `config` (with `head`: the kind and settings build_head takes back)."""
    return {"head": head, "baseline": baseline, "cache": cache_block(cache, layer), "config": config}


def write_metrics(head_dir, head: dict, baseline, cache, layer, config: dict) -> dict:
    """metrics.json, written last (see metrics_doc); returns what it wrote."""
    doc = metrics_doc(head, baseline, cache, layer, config)
    write_json(os.path.join(head_dir, METRICS_FILE), doc)
    return doc


def up_to_date(head_dir, run_fp: str) -> bool:
    """HEAD_DIR holds a complete head (metrics.json, written last, with head.keras and baseline.joblib) of the run
    whose fingerprint is `run_fp` (the cache's fingerprint and every setting that decides the head)."""
    if not all(os.path.isfile(os.path.join(head_dir, n)) for n in (HEAD_FILE, BASELINE_FILE)):
        return False
    return read_metrics_or_empty(head_dir).get("config", {}).get("run_fingerprint") == run_fp


def read_metrics_or_empty(head_dir) -> dict:
    """metrics.json, or {} when it is missing or unreadable (for readers that show what there is)."""
    try:
        return read_metrics(head_dir)
    except HeadMismatch:
        return {}


def read_metrics(head_dir) -> dict:
    """metrics.json as written by `write_metrics`; HeadMismatch with the fix when it is missing or unreadable."""
    path = os.path.join(head_dir, METRICS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise HeadMismatch(f"HEAD_DIR={head_dir}: no readable {METRICS_FILE} ({type(e).__name__}); train the head "
                           f"with `make head HEAD_DIR={head_dir}`") from None


def read_head_record(head_dir, cache) -> HeadRecord:
    """The head's record after checking that HEAD_DIR is complete and was trained on `cache`."""
    retrain = f"retrain it with `make head FEATURES={cache.path} HEAD_DIR={head_dir}`"
    for name in (HEAD_FILE, METRICS_FILE):
        if not os.path.isfile(os.path.join(head_dir, name)):
            raise HeadMismatch(f"HEAD_DIR={head_dir}: no {name}; {retrain}")
    metrics = read_metrics(head_dir)
    try:
        block = metrics["cache"]
        head = metrics.get("head", {})
        record = HeadRecord(str(head_dir), block.get("path"), block["fingerprint"],
                            block.get("layer", cache.layer),  # stage 2 may train on any cached layer; the cut follows
                            tuple(block["feature_shape"]), head.get("val_accuracy"), head.get("val_log_loss"),
                            read_head_config(metrics))
    except (KeyError, TypeError, ValueError) as e:  # ValueError: an unknown head kind
        raise HeadMismatch(f"{os.path.join(head_dir, METRICS_FILE)}: no cache record ({type(e).__name__}: {e}); "
                           f"{retrain}") from None
    if record.fingerprint != cache.fingerprint:
        raise HeadMismatch(f"{record.head_file}: trained on another cache than FEATURES={cache.path} now is "
                           f"({cache.stale_words(record.fingerprint)}; trained on {record.cache_path}); {retrain}")
    if record.layer not in cache.layers or record.feature_shape != cache.feature_shape(record.layer):
        have = {l: list(cache.feature_shape(l)) for l in cache.layers}
        raise HeadMismatch(f"{record.head_file}: trained on layer {record.layer!r} {list(record.feature_shape)}, the "
                           f"cache holds {have}; {retrain}")
    return record


def check_layer_shape(cache, layer):
    """The head and the pooled baseline need (h, w, c) feature maps at `layer`."""
    shape = cache.feature_shape(layer)
    if len(shape) != 3:
        raise CacheMismatch(f"{cache.path}: features at layer {layer!r} have shape {shape}, the head needs "
                            f"(h, w, c) maps; rerun `make features FEATURES={cache.path}` (LAYER empty: the "
                            f"backbone's feature layer)")
    return shape


def load_head(head_dir):
    """head.keras as saved: stage 3's source of weights, and one side of its equivalence check."""
    import keras

    return keras.saving.load_model(os.path.join(head_dir, HEAD_FILE), compile=False)
