"""Each export format: how it is written from the calibrated graph, how it is run again, and its size on disk.

Reads the calibrated Keras wrapper (export/graph.py); writes the file or folder it is given (a temporary name:
export/run.py renames it into place once proven). Runners read them back with the format's own runtime:
tf.saved_model.load, TensorFlow's LiteRT interpreter (tf.lite.Interpreter) and onnxruntime.
Example: python -c "from export.formats import FORMATS, QUANTIZE; print(FORMATS, QUANTIZE)"
"""
import json
import os
import warnings

import numpy as np

from core import WorkflowError

from .graph import INPUT_NAME, OUTPUT_NAME, input_spec, serving_module

FORMATS = ("savedmodel", "litert", "onnx")
QUANTIZE = ("none", "float16", "int8", "int8-full")
ONNX_OPSET = 17  # supported by onnxruntime 1.32 and by tf2onnx 1.17 for every op in the graph
REPRESENTATIVE_N = 100  # train images the int8-full converter calibrates its activation ranges on (TFLite's advice)


def artifact_name(fmt: str, quantize: str) -> str:
    """The export's name inside EXPORT_DIR: savedmodel/, model.onnx, model.tflite or model-<quantize>.tflite."""
    if fmt != "litert" and quantize != "none":
        raise WorkflowError(f"QUANTIZE={quantize} applies to FORMAT=litert only; FORMAT={fmt} exports float32 "
                            f"(use QUANTIZE=none)")
    return {"savedmodel": "savedmodel", "onnx": "model.onnx"}.get(
        fmt, "model.tflite" if quantize == "none" else f"model-{quantize}.tflite")


def write_savedmodel(path, wrapper, size: int, assets):
    import tensorflow as tf

    module, signatures = serving_module(wrapper, size, assets)
    tf.saved_model.save(module, path, signatures=signatures)


def write_litert(path, wrapper, size: int, quantize: str, representative=None):
    """A .tflite of the uint8 -> probabilities graph through Keras' own exporter, float32 or quantised (QUANTIZE).

    Builtin LiteRT ops only (no Flex/SELECT_TF_OPS, which Keras allows by default): the file runs in any LiteRT
    interpreter, not only in TensorFlow's. (Converting this project's tf.Module SavedModel directly leaves the
    weights as resource variables that LiteRT reads as uninitialised, NaN: Keras' ExportArchive freezes them.)"""
    import tensorflow as tf

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    kwargs = {}
    if quantize == "float16":
        kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    elif quantize == "int8":  # dynamic range: int8 weights, float activations
        kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    elif quantize == "int8-full":  # int8 weights and activations, ranges from `representative` train images
        # Integer kernels where LiteRT has them; the calibration's log/sigmoid tail may stay float.
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT],
                  "representative_dataset": lambda: ([x[None]] for x in representative)}
    spec = {**kwargs.pop("target_spec", {}), "supported_ops": ops}
    wrapper.export(path, format="litert", verbose=False, input_signature=[input_spec(size)], target_spec=spec,
                   **kwargs)


def write_onnx(path, wrapper, size: int, metadata: dict):
    """ONNX through Keras' own exporter (tf2onnx on the TensorFlow backend), with `metadata` as metadata_props."""
    import onnx

    wrapper.export(path, format="onnx", verbose=False, input_signature=[input_spec(size)], opset_version=ONNX_OPSET)
    proto = onnx.load(path)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.save(proto, path)


def runner(fmt: str, path):
    """fn(uint8 (n, S, S, 3)) -> (n, K) float64 probabilities, with the format's own runtime."""
    if fmt == "savedmodel":
        import tensorflow as tf

        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda x: np.asarray(fn(**{INPUT_NAME: tf.constant(x, tf.uint8)})[OUTPUT_NAME], np.float64)
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # onnxruntime's info lines would tear the progress output
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: np.asarray(sess.run(None, {name: np.asarray(x, np.uint8)})[0], np.float64)
    if fmt == "litert":
        return _litert_runner(path)
    raise AssertionError(fmt)


def _litert_runner(path):
    import tensorflow as tf

    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" (for ai_edge_litert): still TF 2.21's own
        warnings.simplefilter("ignore", UserWarning)
        interp = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count())
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = [None]

    def run(x):
        x = np.asarray(x, np.uint8)
        if shape[0] != x.shape:  # the batch size is dynamic: resize and re-plan only when it changes
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            shape[0] = x.shape
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return np.asarray(interp.get_tensor(out["index"]), np.float64)

    return run


def size_on_disk(path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
