"""core/optimizer.py: the fused Adam follows Keras' Adam step for step, weight decay included, through the fused
kernel (one ResourceApplyAdam per weight per step)."""
import numpy as np
import pytest


def _train(opt, steps=5, seed=0):
    """Weights of a small Dense net after `steps` eager updates with `opt` on fixed random gradients' data."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(1)])
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((32, 7), dtype=np.float32), rng.standard_normal((32, 1), dtype=np.float32)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return [w.numpy() for w in model.weights]


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_fused_adam_matches_keras_adam(monkeypatch, weight_decay):
    import keras
    import tensorflow as tf

    from core.optimizer import adam

    calls = []
    fused = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", lambda **kw: calls.append(1) or fused(**kw))
    got = _train(adam(1e-2, weight_decay))
    want = _train(keras.optimizers.Adam(learning_rate=1e-2, weight_decay=weight_decay))
    assert len(calls) == 5 * 4  # 5 steps x 4 weights: every update went through the fused kernel
    moved = max(float(np.abs(w - w0).max()) for w, w0 in zip(want, _train(adam(1e-2), steps=0)))
    assert moved > 1e-2  # the steps moved the weights, so equality below is not trivially true
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
