"""`make export`: model.keras of stage 3 -> a self-contained SavedModel, LiteRT or ONNX file that proves itself.

Reads MODEL (model.keras and its record, finetune/record.py), FEATURES and DATA (the val images for the proof;
by default the ones the record names). Writes, in EXPORT_DIR, one of:
  savedmodel/        signatures serving_default (uint8 `images`) and serving_bytes (encoded JPEG/PNG `image_bytes`),
                     both -> `probabilities`; assets/record.json (the export's record) and assets/labels.txt
  model.onnx         input `images` uint8 (n, S, S, 3) -> (n, K); metadata_props class_names, temperature, record
  model[-Q].tflite   LiteRT, QUANTIZE=none|float16|int8|int8-full; input uint8 (n, S, S, 3) -> (n, K)
and beside it <name>.json: the export's record (input, output, class names, T, the model's own record, the proof).
Example: python -m export --model artifacts/finetune/model.keras --format onnx --export-dir artifacts/export

The export is written under a temporary name, run back with its own runtime on the val images and compared with
model.keras + T (export/proof.py); only a passing proof renames it into place, and the record is written last.
A failed proof leaves nothing final and exits 2 with the figures.
"""
import json
import os
import shutil
import tempfile
import time

from core import WorkflowError, precision
from core.files import file_hash, partial_name, write_json
from core.lock import output_lock
from core.versions import package_versions

from . import formats, graph, proof


def export_record(model_path, meta: dict, fmt: str, quantize: str, name: str) -> dict:
    """What the export carries: its contract, the class names, T and the model's own record."""
    size, names = int(meta["image_size"]), list(meta["class_names"])
    return {"format": fmt, "quantize": quantize, "artifact": name, "image_size": size, "class_names": names,
            "temperature": graph.temperature(meta),
            "input": {"name": graph.INPUT_NAME, "dtype": "uint8", "shape": [None, size, size, 3],
                      "meaning": "raw RGB 0..255, resized to image_size x image_size (stage 1 resizes bilinearly, "
                                 "aspect not kept)"},
            "output": {"name": graph.OUTPUT_NAME, "dtype": "float32", "shape": [None, len(names)],
                       "meaning": "calibrated class probabilities in class_names order (temperature applied)"},
            "model": os.path.abspath(model_path), "model_sha256": file_hash(model_path),
            "model_precision": meta.get("precision", "float32"), "exported_precision": "float32",
            "model_record": {k: v for k, v in meta.items() if k != "precision_used"},
            "versions": package_versions(("onnx", "onnxruntime", "tf2onnx"))}


def write_format(tmp, fmt, quantize, wrapper, record, meta, data, features):
    size = record["image_size"]
    if fmt == "savedmodel":
        with tempfile.TemporaryDirectory() as d:  # assets are copied into savedmodel/assets/ when saved
            paths = [os.path.join(d, "record.json"), os.path.join(d, "labels.txt")]
            with open(paths[0], "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            with open(paths[1], "w") as f:
                f.write("".join(f"{n}\n" for n in record["class_names"]))
            formats.write_savedmodel(tmp, wrapper, size, paths)
    elif fmt == "onnx":
        formats.write_onnx(tmp, wrapper, size, {"class_names": record["class_names"],
                                                "temperature": str(record["temperature"]), "record": record})
    else:
        rep = None
        if quantize == "int8-full":
            rep, _ = proof.image_set(meta, data, features, split=proof.SPLIT_TRAIN, limit=formats.REPRESENTATIVE_N)
        formats.write_litert(tmp, wrapper, size, quantize, rep)


def _put(tmp, final):
    """Rename `tmp` (a file or a folder) onto `final`; a folder replaces the previous one."""
    if os.path.isdir(tmp):
        old = f"{final}.old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def export_model(model_path, fmt: str, export_dir, quantize: str = "none", data=None, features=None) -> dict:
    """Write, prove and commit one export; returns its record (with `proof`). Raise WorkflowError on a failed proof."""
    from finetune.record import load_model, to_precision

    if fmt not in formats.FORMATS:
        raise WorkflowError(f"FORMAT={fmt}: choose one of {', '.join(formats.FORMATS)}")
    if quantize not in formats.QUANTIZE:
        raise WorkflowError(f"QUANTIZE={quantize}: choose one of {', '.join(formats.QUANTIZE)}")
    name = formats.artifact_name(fmt, quantize)
    final = os.path.join(str(export_dir), name)
    with output_lock(final, "EXPORT_DIR"):
        t0 = time.perf_counter()
        model, meta = load_model(model_path, "float32")  # a bf16 model.keras is exported (and proven) in float32
        if precision.policy_of(model) != "float32":  # whatever its record says: tf2onnx and LiteRT need float32
            model = to_precision(model, "float32")
        kind = graph.to_logits(model)  # calibrate from the logits, in the graph and in the reference
        images, labels = proof.image_set(meta, data, features)
        ref = proof.reference(model, meta, images, model_path, kind)
        record = {**export_record(model_path, meta, fmt, quantize, name),
                  "calibrated_from": f"logits (the {kind} switched off)" if kind else "logit(p), clipped"}
        wrapper = graph.calibrated(model, meta, kind)
        tmp = partial_name(final)
        try:
            write_format(tmp, fmt, quantize, wrapper, record, meta, data, features)
            figures = proof.prove(fmt, quantize, proof.run_batches(formats.runner(fmt, tmp), images), ref, labels)
            line = proof.describe(fmt, quantize, figures)
            if not figures["passed"]:
                raise WorkflowError(f"{final}: proof failed, nothing written: {line}")
            if os.path.exists(f"{final}.json"):  # the previous export's record must not vouch for this one
                os.remove(f"{final}.json")
            _put(tmp, final)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.remove(tmp)
        record = {**record, "proof": figures, "bytes": formats.size_on_disk(final),
                  "seconds": round(time.perf_counter() - t0, 3)}
        write_json(f"{final}.json", record)  # last: where it exists, the export beside it passed its proof
    print(f"{final}: {record['bytes'] / 1e6:,.1f} MB in {record['seconds']:.1f}s; {line}")
    return record
