"""finetune/gradients.py: the head's input gradient without a transposed kernel, the same values as Keras' Dense."""
import numpy as np
import pytest


def model_with_trained_input(policy="float32"):
    """A trainable Conv2D feeding the flatten head: stage 3's shape of the problem (the head's input is trained)."""
    import keras

    from classify.head import build_head
    from core.precision import building

    keras.utils.set_random_seed(0)
    with building(policy):
        head = build_head((3, 3, 64), units=16)
        inp = keras.Input((3, 3, 8))
        return keras.Model(inp, head(keras.layers.Conv2D(64, 1, name="block")(inp)))


def output_and_gradients(model, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y = model(x, training=False)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_rerouted_head_gives_keras_outputs_and_gradients(policy):
    from finetune.gradients import input_gradient

    model = model_with_trained_input(policy)
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 8)).astype("float32")
    y0, g0 = output_and_gradients(model, x)
    assert input_gradient(model) == ["head_dense", "head_output"]
    y1, g1 = output_and_gradients(model, x)
    np.testing.assert_array_equal(y1, y0)  # the forward product is Dense's own
    assert len(g1) == len(g0) == 6  # the block's kernel and bias, then the head's
    for a, b in zip(g1, g0):
        assert np.abs(b).max() > 0
        # The same sums in another order: float32 rounding apart, the same gradient (measured 1.5e-7 of the largest).
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_no_gradient_matmul_transposes_the_kernel():
    """The traced train step: every MatMul that reads head_dense's kernel leaves it untransposed, which is the whole
    point; without the reroute TensorFlow's gradient reads it with transpose_b (checked too, so this can fail)."""
    import tensorflow as tf

    from finetune.gradients import input_gradient

    def kernel_transposed(model) -> bool:
        x = tf.zeros((4, 3, 3, 8))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True))
            return tape.gradient(loss, model.trainable_weights)

        ops = step.get_concrete_function().graph.get_operations()
        return any(op.type == "MatMul" and op.get_attr("transpose_b") and tuple(op.inputs[1].shape) == (576, 16)
                   for op in ops)

    model = model_with_trained_input()
    assert kernel_transposed(model)
    input_gradient(model)
    assert not kernel_transposed(model)


def test_rerouted_model_saves_and_loads_as_plain_keras(tmp_path):
    """model.keras stays loadable by Keras alone: the layers are still keras.layers.Dense, their config unchanged."""
    import keras

    from finetune.gradients import input_gradient

    model = model_with_trained_input()
    config = model.get_layer("head").get_layer("head_dense").get_config()
    input_gradient(model)
    input_gradient(model)  # compile_for_finetuning runs after every change of `trainable`: once is enough
    dense = model.get_layer("head").get_layer("head_dense")
    assert type(dense) is keras.layers.Dense and dense.get_config() == config
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = np.ones((2, 3, 3, 8), "float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert "call" not in vars(loaded.get_layer("head").get_layer("head_dense"))  # a fresh load is Keras' own


def test_models_without_a_head_are_left_alone():
    import keras

    from finetune.gradients import input_gradient

    inp = keras.Input((5,))
    assert input_gradient(keras.Model(inp, keras.layers.Dense(2)(inp))) == []
