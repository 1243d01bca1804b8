"""Stage 3's input gradient through the head's Dense layers: Keras' own values, without transposing the kernel.

Reads and writes nothing. Example: python -c "from finetune.gradients import input_gradient; print(input_gradient.__doc__)"

Why: for y = x @ W, TensorFlow's gradient with respect to x is matmul(dy, W, transpose_b=True), and on CPUs its
kernels first copy W transposed. For the recipe's head_dense (W: 37,632 x 1,024 at 150 px, 154 MB) that matmul
took 66-74 ms on 2 cores (AMD EPYC, avx512; oneDNN on or off), against 19-21 ms for the same product written as
transpose(matmul(W, dy, transpose_b=True)), which transposes only dy (batch x 1,024). Stage 2 never asks for it (its
input is not trained); stage 3 asks for it on every step of both paths. Rerouted, a cached step's forward and backward
(batch 32) went from 198 to 138 ms, and on 320 images the cached epoch from 2.4 to 1.75 s, the end-to-end one from 5.8
to 5.1 s (bench/finetuning.py, streamed features).
The layers stay keras.layers.Dense, so model.keras is saved and loaded as before; only the in-memory layer's call
is rerouted, the same product in another order of the same sums (float rounding apart, the same gradient).
"""
ROUTED = "_input_gradient_routed"  # marks a layer already rerouted: compile_for_finetuning runs after every change


def input_gradient(model) -> list:
    """Reroute each plain Dense layer of `model`'s head (on flat inputs) through `_matmul`; returns their names."""
    import keras

    try:
        head = model.get_layer("head")
    except ValueError:
        return []
    done = []
    for layer in head.layers:
        if (type(layer) is keras.layers.Dense and len(layer.input.shape) == 2 and not layer.lora_enabled
                and layer.quantization_mode is None):
            if not getattr(layer, ROUTED, False):
                layer.call = _routed_call(layer)
                setattr(layer, ROUTED, True)
            done.append(layer.name)
    return done


def _routed_call(layer):
    """keras.layers.Dense.call (matmul, bias, activation) with `_matmul` for the product."""
    import tensorflow as tf
    from keras import ops

    def call(inputs, training=None):
        # Read as a tensor, so the custom gradient flows back through the read to the variable. Keras' __call__ has
        # opened this layer's autocast scope, so the read is in its compute dtype, as Dense.call's.
        x = _matmul(inputs, tf.convert_to_tensor(layer.kernel))
        if layer.bias is not None:
            x = ops.add(x, layer.bias)
        return layer.activation(x) if layer.activation is not None else x

    return call


def _matmul(x, w):
    """x @ w whose gradient transposes only the small operands (x: batch x n, dy: batch x m; never w: n x m)."""
    import tensorflow as tf

    @tf.custom_gradient
    def product(x, w):
        def grad(dy):
            return tf.transpose(tf.matmul(w, dy, transpose_b=True)), tf.matmul(x, dy, transpose_a=True)

        return tf.matmul(x, w), grad

    return product(x, w)
