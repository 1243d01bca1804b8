"""The fine-tuned model's record: MODEL_DIR/model.keras with a `workflow.json` inside, metrics.json and curves.png.

Writes MODEL_DIR (layout: README, "MODEL_DIR"); reads model.keras for `make predict` and `make submission`.
Example: python -c "from finetune.record import load_model; m, meta = load_model('artifacts/finetune/model.keras'); print(meta['class_names'])"

The saved model takes raw RGB in [0, 255] (preprocessing is its first layer) and carries its own record: a
`workflow.json` member appended to the .keras zip (Keras reads only the members it wrote and ignores it), so
prediction needs nothing but the file. model.keras is written last: where it exists, metrics.json belongs to it.
"""
import json
import os
import zipfile

from core import WorkflowError, precision
from core.curves import save_curves
from core.files import replacing, write_json
from core.runs import columns
from extract import backbones

MODEL_FORMAT = "dogcat-finetuned-model"
META_MEMBER = "workflow.json"
MODEL_FILE, METRICS_FILE, CURVES_FILE = "model.keras", "metrics.json", "curves.png"
INPUT = "raw RGB 0..255, float32, (image_size, image_size, 3); preprocessing is the model's first layer"


def save_model(model, path, meta: dict):
    """Save an uncompiled copy to a temporary .keras, append workflow.json, check it loads, rename into place."""
    import keras

    with replacing(path) as tmp:  # model.partial.keras: Keras insists on the .keras suffix
        # A compiled model would also save Adam's two moments per trained weight (twice the file) that no reader
        # needs: a new, uncompiled Functional over the same layers saves the weights alone.
        keras.Model(model.input, model.output, name=model.name).save(tmp)
        with zipfile.ZipFile(tmp, "a") as z:
            z.writestr(META_MEMBER, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1, sort_keys=True))
        keras.saving.load_model(tmp, compile=False)  # proves the appended member did not break the file


def read_meta(path) -> dict:
    """The workflow.json record inside a .keras written by `make finetune`; raise WorkflowError otherwise."""
    if not os.path.isfile(path):
        raise WorkflowError(f"MODEL={path}: no such file; run `make finetune` first (it writes "
                            f"MODEL_DIR/model.keras) or pass MODEL=<file>")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META_MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise WorkflowError(f"MODEL={path}: not a model written by `make finetune` (no {META_MEMBER} record "
                            f"inside); rerun `make finetune`") from None
    if meta.get("format") != MODEL_FORMAT:
        raise WorkflowError(f"MODEL={path}: format={meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    return meta


def num_classes(meta: dict) -> int:
    """K of a model's record (models written before K was recorded: their class names')."""
    return int(meta.get("num_classes", len(meta["class_names"])))


def recorded_precision(meta: dict) -> str:
    """The precision the model was saved in (models written before PRECISION existed: float32)."""
    return meta.get("precision", "float32")


def to_precision(model, compute: str):
    """`model` rebuilt to compute in `compute` ('float32' | 'bfloat16'), its float32 head kept (finetune/model.py)."""
    return precision.convert(model, compute, keep=("head",))


def load_model(path, requested: str = ""):
    """(keras model, workflow record + `precision_used`) from a file written by save_model, computing in the
    precision it records, or in PRECISION=`requested` (auto | float32 | bfloat16) when given."""
    import keras

    meta = read_meta(path)
    model = keras.saving.load_model(path, compile=False)
    saved = recorded_precision(meta)
    used = precision.resolve(requested, "inference", bf16_loses=backbones.bf16_loses_of(meta["config"])
                             ) if requested else saved
    if used != saved:
        model = to_precision(model, used)
    return model, {**meta, "precision_used": used}


def read_metrics_or_empty(model_dir) -> dict:
    """MODEL_DIR/metrics.json, or {} when it is missing or unreadable (for readers that show what there is)."""
    try:
        with open(os.path.join(model_dir, METRICS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def up_to_date(model_dir, run_fp: str) -> bool:
    """MODEL_DIR/model.keras exists and was written by a run of this configuration (its run fingerprint)."""
    try:
        return read_meta(os.path.join(model_dir, MODEL_FILE))["config"]["run_fingerprint"] == run_fp
    except (WorkflowError, KeyError):
        return False


def write_artifacts(model, model_dir, metrics: dict, cache, rows, curves_title: str):
    """curves.png, metrics.json (with `history` as columns of `rows`), then model.keras with its record.

    model.keras comes last: it is what `up_to_date` looks for, so it never exists without its metrics and curves.
    """
    metrics = {**metrics, "history": columns(rows)}
    k = len(cache.class_names)
    meta = {"image_size": cache.config["image_size"], "class_names": cache.class_names, "num_classes": k,
            **({"positive_class": cache.class_names[1]} if k == 2 else {}), "input": INPUT,
            "precision": metrics["config"].get("precision", "float32"),  # what predict computes in by default
            **{k: metrics[k] for k in ("config", "before", "after", "reload_max_abs_diff")},
            **{k: metrics[k] for k in ("calibration", "temperature") if k in metrics}}  # applied by predict
    save_curves(os.path.join(model_dir, CURVES_FILE), rows, curves_title)
    write_json(os.path.join(model_dir, METRICS_FILE), metrics)
    save_model(model, os.path.join(model_dir, MODEL_FILE), meta)
