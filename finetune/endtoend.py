"""End-to-end fine-tuning (the default): the whole network on the image files, augmented on the fly every epoch.

Reads DATA's images (the cache's train and val rows). Writes, through finetune/run.py, MODEL_DIR.
Example: python -m finetune --data data/train --features artifacts/features.h5 --head-dir artifacts/head --model-dir artifacts/finetune

Every image goes through the one image pipeline (extract/pipeline.py), the exact decode stage 1 cached, so the
model sees the same pixels as the head did; augmentation is the one policy of extract/augment.py.
"""
from extract import augment
from extract.pipeline import labelled_dataset

from . import equivalence
from .infer import predict_labelled


class EndToEndPath:
    """The end-to-end path's part in finetune/run.py's skeleton."""

    name = "end-to-end"
    data_note = None  # the images are decoded every epoch: MEM_BUDGET does not apply

    def check_cache(self, cache, unfreeze_from):
        pass

    def check_head_layer(self, cache, unfreeze_from, head_layer):
        pass

    def mixed_precision(self, flag: str, gpus) -> bool:
        mixed = {"auto": bool(gpus), "on": True, "off": False}[flag]
        if mixed and not gpus:
            print("note: MIXED_PRECISION=on without a GPU: CPUs emulate float16, expect it to be slower than off")
        return mixed

    def run_fields(self, s, cache) -> dict:
        return {"augmentation": augment.end_to_end_record()}

    def equivalence(self, model, trunk, head_src, cache, record, s):
        return equivalence.full_model(model, head_src, cache, record.layer, s.data, s.batch, record, s.head_dir)

    def trained(self, tm, tt, unfreeze_from):
        from .model import set_trainable

        return tm, set_trainable(tm, tt, unfreeze_from)

    def datasets(self, cache, s, tr, va, replicas):
        # Stage 3's batch rule (finetune/train.py): whole training batches; validation too on several replicas.
        size = cache.config["image_size"]
        ds_train = labelled_dataset(s.data, [cache.paths[i] for i in tr], cache.labels[tr], size, s.batch,
                                    seed=s.seed, augment=True, pad_last=True)
        self.ds_val = labelled_dataset(s.data, [cache.paths[i] for i in va], cache.labels[va], size, s.batch,
                                       pad_last=replicas > 1)
        return ds_train, self.ds_val, None

    def describe(self, s, cache, tr) -> str:
        return f"on {len(tr)} images"

    def evaluate(self, model, trunk, cache, s, va, reference=None):
        """(val labels, P after training, extra metrics) of the exported model on the val images."""
        y, p = predict_labelled(model, self.ds_val)
        return y, p, {}

    def curves_title(self, s, cache) -> str:
        return (f"fine-tuning from {s.unfreeze_from}, LR {s.lr:g}, {cache.config['image_size']}px, "
                f"{cache.config['weights']} weights")
