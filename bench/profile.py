"""FLOP counts of a model's train step or inference forward, from TensorFlow's profiler on the traced graph.

Reads and writes nothing. Example: python -c "from bench.profile import step_gflops"   # see tests/test_bench.py
"""


def step_gflops(model, input_shape, train: bool) -> float:
    """GFLOPs per example of `model`'s train step (forward + gradients of its trainable weights) or of its inference
    forward, counted by TensorFlow's profiler on the traced graph at batch 1 (every op's work scales with the batch).

    The graph is first cut to what the outputs need, as the runtime does: the traced gradient also holds backward
    ops of frozen layers that nothing reads, and counting them would add ~3.5 GFLOPs to a 150 px fine-tuning step.
    Optimizer updates are not counted: their cost is memory traffic, which the timings show instead.
    """
    import tensorflow as tf

    def fn(x):
        if not train:
            return model(x, training=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    cf = tf.function(fn).get_concrete_function(tf.TensorSpec((1,) + tuple(input_shape), tf.float32))
    needed = tf.compat.v1.graph_util.extract_sub_graph(cf.graph.as_graph_def(add_shapes=True),
                                                       [t.op.name for t in cf.outputs])
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(needed, name="")
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns of its own deprecation, on every call
    try:
        return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops / 1e9
    finally:
        tf.get_logger().setLevel(level)


def gflops_per_example(model, input_shape) -> dict:
    """{"train": GFLOPs of a train step, "val": GFLOPs of a val forward} per example, as `flop_ceiling` takes them."""
    return {"train": step_gflops(model, input_shape, True), "val": step_gflops(model, input_shape, False)}


def flop_ceiling(slow: dict, fast: dict, n_train: int, n_val: int) -> float:
    """The ratio of two paths' epochs if every FLOP took the same time: {"train", "val"} GFLOPs per example each."""
    work = [n_train * d["train"] + n_val * d["val"] for d in (slow, fast)]
    return work[0] / work[1]
