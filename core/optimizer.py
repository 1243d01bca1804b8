"""Adam for every training stage (the head, both fine-tuning paths, the sweep): Keras' Adam, each weight's update
one fused kernel.

Reads and writes nothing. Example: python -c "from core.optimizer import adam; print(adam(1e-4).name)"

Why: Keras 3 writes Adam's update as about ten element-wise ops per weight (m, v, then the weight), each a pass
over memory. Without XLA, which stages 2 and 3 run without by default (Keras drops XLA under op determinism), those
passes took about a third of the head's step: on 2 cores (avx512, 2,000 rows of a 150 px cache, in memory) the
flatten head's epoch took 2.5-3.1 ms per train row with Keras' Adam, 1.9-2.0 with TensorFlow's fused
ResourceApplyAdam (2.8 with XLA); a cached fine-tuning epoch went from 10.2 to 8.2 ms per row. The kernel computes
Keras' formula
(m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= m lr sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps)),
element-wise, so it is as deterministic as the unfused ops; its rounding may differ in the last bit
(tests/test_optimizer.py bounds it). Weight decay stays Keras' own step, applied before the update.
"""
_CLASS = None


def _fused_adam_class():
    import keras
    import tensorflow as tf

    class FusedAdam(keras.optimizers.Adam):
        """keras.optimizers.Adam whose dense float updates run as one tf.raw_ops.ResourceApplyAdam per weight."""

        def update_step(self, gradient, variable, learning_rate):
            if self.amsgrad or isinstance(gradient, tf.IndexedSlices):  # no fused kernel: Keras' own ops
                return super().update_step(gradient, variable, learning_rate)
            dt = variable.dtype
            i = self._get_variable_index(variable)
            step = tf.cast(self.iterations + 1, dt)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[i].value.handle, v=self._velocities[i].value.handle,
                beta1_power=tf.pow(tf.cast(self.beta_1, dt), step), beta2_power=tf.pow(tf.cast(self.beta_2, dt), step),
                lr=tf.cast(learning_rate, dt), beta1=tf.cast(self.beta_1, dt), beta2=tf.cast(self.beta_2, dt),
                epsilon=tf.cast(self.epsilon, dt), grad=tf.cast(gradient, dt), use_locking=False)

    return FusedAdam


def adam(learning_rate: float, weight_decay=None):
    """A fresh Adam (fused updates; `weight_decay`: Keras' decoupled decay, None for plain Adam)."""
    global _CLASS
    if _CLASS is None:  # built once: TensorFlow is imported only when a stage trains
        _CLASS = _fused_adam_class()
    return _CLASS(learning_rate=learning_rate, weight_decay=weight_decay)
