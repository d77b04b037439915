"""Checkpoints: one dict per file, loaded with torch.load(weights_only=True) and written
atomically (store.py); pruned tensors stored as bitmask + values with their masks
(sparse_format.py)."""
from utils.checkpoints.store import (DEFAULT_DIR, build_model, checkpoint_name,  # noqa: F401
                                     load_checkpoint, make_checkpoint, resolve_checkpoint,
                                     root_learning_rate, save_checkpoint,
                                     update_metrics)
