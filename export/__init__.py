"""Deployable exports of a stage-3 model.keras: SavedModel, LiteRT and ONNX (`make export`, export/run.py)."""
