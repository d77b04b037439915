"""Checkpoints: one dict per file, loaded with torch.load(weights_only=True) and written
atomically. The scripts' checkpoints (store.py: a registered model's config, metrics, flags);
any model, masked or compact, from Python (model_files.py: save_model / load_model, rebuilt
through a builder spec, builders.py); pruned tensors stored as bitmask + values with their masks
(sparse_format.py); Deep Compression files (compressed.py)."""
from utils.checkpoints.model_files import load_model, metadata_of, save_model  # noqa: F401
from utils.checkpoints.store import (DEFAULT_DIR, build_model, checkpoint_name,  # noqa: F401
                                     describe_structure,
                                     load_checkpoint, load_model_file, make_checkpoint,
                                     resolve_checkpoint, root_learning_rate, save_checkpoint,
                                     update_metrics)
