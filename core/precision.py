"""The network's compute precision: PRECISION=auto|float32|bfloat16, and the CPU facts that `auto` decides on.

Reads /proc/cpuinfo (the CPU's flags), or PRECISION_CPU_FLAGS in its place. Writes nothing.
Example: python -c "from core.precision import resolve; print(resolve('auto', 'inference'))"

`auto` decides per use and per backbone: bfloat16 for `inference` (extraction, predict, submission, the report) on a
CPU with native bf16, float32 for `training` everywhere (AUTO_BF16 says why), and float32 for a backbone whose entry
make bench measured slower in bf16 (`bf16_loses`: the MobileNets, whose depthwise convolutions gain nothing;
extract/backbones.py). make bench times both precisions per backbone and flags a wrong pick. PRECISION_CPU_FLAGS, read here and nowhere else, stands
in for the CPU's flags (comma- or space-separated; `none` for no flags), so that any machine can play the other kind
of CPU: `make test` runs its fast tier that way.

`convert` rebuilds a Keras model in another precision (e.g. a bfloat16 model.keras predicting in float32).

bfloat16 means Keras' mixed_bfloat16 policy: the layers compute in bf16 while their variables, and every feature
the cache stores, stay float32. It pays only where the CPU multiplies bf16 natively (`avx512_bf16`: AMD Zen 4+,
Intel Cooper Lake; `amx_bf16`: Intel Sapphire Rapids+): there oneDNN runs bf16 convolutions and GEMMs at up to
twice the float32 rate. Elsewhere bf16 is converted to float32 around every kernel: no faster, only less exact.
On a GPU, `auto` keeps float32 here and leaves speed to the GPU's own mixed precision (MIXED_PRECISION), as before.
"""
import os
from contextlib import contextmanager

from .errors import WorkflowError

CHOICES = ("auto", "float32", "bfloat16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # Keras dtype policy of each resolved precision
CPUINFO = "/proc/cpuinfo"
FLAGS_ENV = "PRECISION_CPU_FLAGS"  # stands in for CPUINFO's flags: tests play the other kind of CPU with it
# Where `auto` takes bf16 on a CPU with native bf16: only for the uses that `make bench` measures faster in bf16 there
# (bench.json `bf16`, each stage's speed-up beside its `auto` choice). Forward passes gain from oneDNN's bf16 kernels;
# training under Keras' mixed_bfloat16 on this TensorFlow does not (its backward pass and casts cost more than the
# faster matmuls save), so `auto` trains in float32 until a bench says otherwise.
AUTO_BF16 = {"inference": True, "training": False}


def cpu_flags(path=CPUINFO) -> set:
    """The flags of the first CPU listed in `path` (empty where there is no such file, e.g. macOS); for this
    machine's /proc/cpuinfo, PRECISION_CPU_FLAGS wins when it is set."""
    if path == CPUINFO and FLAGS_ENV in os.environ:
        value = os.environ[FLAGS_ENV].replace(",", " ").split()
        return set() if value in ([], ["none"]) else set(value)
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags=None) -> bool:
    """The CPU multiplies bfloat16 natively (`flags`: a set of /proc/cpuinfo flags; None reads this machine's)."""
    flags = cpu_flags() if flags is None else set(flags)
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def check(requested: str, what="PRECISION") -> str:
    """`requested` if it is one of CHOICES; else a WorkflowError naming them."""
    if requested not in CHOICES:
        raise WorkflowError(f"{what}={requested}: choose one of {', '.join(CHOICES)} (auto: bfloat16 where the CPU "
                            f"has {' or '.join(NATIVE_BF16_FLAGS)}, else float32)")
    return requested


def check_use(use: str) -> str:
    if use not in AUTO_BF16:
        raise ValueError(f"use={use!r}: one of {', '.join(AUTO_BF16)}")
    return use


def resolve(requested: str, use: str = "inference", flags=None, gpu=None, bf16_loses: str = "") -> str:
    """'float32' or 'bfloat16' for PRECISION=`requested` when the network is used for `use` ('inference' |
    'training') on a CPU with `flags` (None: this machine's), with or without a GPU (None: ask TensorFlow);
    `bf16_loses`: why this network runs slower in bf16 even there ('' where it gains: its backbone entry says)."""
    check_use(use)
    if check(requested) != "auto":
        return requested
    if not AUTO_BF16[use] or bf16_loses:
        return "float32"
    if gpu is None:
        gpu = has_gpu()
    return "bfloat16" if not gpu and native_bf16(flags) else "float32"


def other(resolved: str) -> str:
    """The other resolved precision: what `auto` would accept as well (an artifact made on the other kind of CPU)."""
    return "float32" if resolved == "bfloat16" else "bfloat16"


def describe(requested: str, resolved: str, flags=None, use: str = "inference", bf16_loses: str = "") -> str:
    """One line for the log: what PRECISION became for `use` (of a network where `bf16_loses`, see resolve), and
    why."""
    flags = cpu_flags() if flags is None else set(flags)
    native = native_bf16(flags)
    why = (f"this CPU has {'/'.join(f for f in NATIVE_BF16_FLAGS if f in flags)}"
           if native else f"this CPU has no {' or '.join(NATIVE_BF16_FLAGS)}")
    if FLAGS_ENV in os.environ:
        why += f" ({FLAGS_ENV}={os.environ[FLAGS_ENV]})"
    if requested == "auto" and native and not AUTO_BF16[check_use(use)]:
        why += f", but bf16 {use} is slower than float32 on this TensorFlow (make bench)"
    elif requested == "auto" and native and bf16_loses:
        why += f", but {bf16_loses}"
    line = f"precision: PRECISION={requested} -> {resolved} for {use} ({why})"
    if resolved == "bfloat16" and not native:
        line += "; bf16 is emulated here: expect no speed-up, only bf16's rounding"
    return line


@contextmanager
def building(precision: str):
    """Layers created inside compute in `precision` ('float32' | 'bfloat16'; a Keras policy name passes through)."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(POLICY.get(precision, precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def record(requested: str) -> dict:
    """What an artifact keeps about how its precision was chosen (provenance, not identity)."""
    return {"precision_requested": requested, "cpu_native_bf16": native_bf16()}


def _repolicy(node, policy: str, keep):
    """`node` (a serialized Keras object) with every dtype policy set to `policy`, except inside models in `keep`."""
    if isinstance(node, list):
        return [_repolicy(v, policy, keep) for v in node]
    if not isinstance(node, dict):
        return node
    cls = str(node.get("class_name", ""))
    if cls.endswith("DTypePolicy") and "Quantized" not in cls:
        return {**node, "config": {**node.get("config", {}), "name": policy}}
    if node.get("name") in keep and isinstance(node.get("config"), dict) and "layers" in node["config"]:
        return node  # a nested model that keeps its own precision (e.g. the float32 head)
    return {k: _repolicy(v, policy, keep) for k, v in node.items()}


def convert(model, precision: str, keep=()):
    """A copy of `model` computing in `precision` ('float32' | 'bfloat16' | a Keras policy name): rebuilt from its
    config with every layer's dtype policy replaced, nested models too (except those named in `keep`), then given
    `model`'s weights. Variables are float32 in every such policy, so the weights copy exactly."""
    import keras

    policy = POLICY.get(precision, precision)
    new = keras.saving.deserialize_keras_object(_repolicy(keras.saving.serialize_keras_object(model), policy,
                                                          set(keep)))
    for layer in _all_layers(new, skip=set(keep)):  # a nested model's config holds no policy of its own
        if hasattr(layer, "layers"):
            layer.dtype_policy = policy
    new.set_weights(model.get_weights())
    return new


def policy_of(model) -> str:
    """The compute precision most of `model`'s layers run in: 'float32', 'bfloat16' or a Keras policy name."""
    from collections import Counter

    names = Counter(l.dtype_policy.name for l in _all_layers(model) if l.weights)
    name = names.most_common(1)[0][0] if names else "float32"
    return {v: k for k, v in POLICY.items()}.get(name, name)


def _all_layers(model, skip=()):
    """Every layer of `model`, nested models' layers included, except models named in `skip` and their layers."""
    for layer in model.layers:
        if layer.name in skip:
            continue
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer, skip)


def feature_error(got, ref) -> dict:
    """How far features `got` (e.g. computed in bf16) are from `ref` (float32, same images): max abs, max abs relative
    to ref's largest magnitude, RMS relative."""
    import numpy as np

    ref = np.asarray(ref, np.float64)
    d = np.abs(np.asarray(got, np.float64) - ref)
    return {"max_abs": float(d.max()), "max_rel": float(d.max() / max(np.abs(ref).max(), 1e-30)),
            "rms_rel": float(np.sqrt((d ** 2).mean() / max((ref ** 2).mean(), 1e-30)))}
