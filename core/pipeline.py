"""tf.data settings every input pipeline of the project uses: fixed parallelism, and tf.data's autotuner off.

Reads and writes nothing. Example: python -c "import tensorflow as tf; from core.pipeline import fixed_pipeline; print(fixed_pipeline(tf.data.Dataset.range(3)))"
"""
import os

# Decoding is PIL under tf.numpy_function: PIL drops the GIL while decoding and resizing, so threads scale.
DECODE_THREADS = os.cpu_count() or 1
PREFETCH_BATCHES = 2  # the next batch is ready while the model runs this one; more only holds memory


def fixed_pipeline(ds, prefetch: int = PREFETCH_BATCHES):
    """`ds` prefetching `prefetch` batches, with tf.data's autotuner off: every pipeline here sets its parallelism.

    Why: with the autotuner on, dropping an iterator waits for the autotuner's next wake-up, which comes at
    5.1, 10.2, 20.5 s ... after the iterator started (as measured: its sleeps double). On 2 busy cores, extractions
    whose loop ended at ~11 s returned at 20.5 s (5 of 6 runs), and head epochs of ~2.6 s took 5.1 s (Keras drops
    each epoch's iterators). With it off: no such wait in 6 extractions.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(prefetch).with_options(options)
