"""Datasets: what each one is (datasets.py), where its files come from offline (offline.py), how
they are read safely (safe_pickle.py), and the batches training sees (loader.py)."""
from utils.data.datasets import (DATASETS, DatasetSpec, dataset_names, get_spec,  # noqa: F401
                                 load_dataset)
from utils.data.loader import (BatchLoader, Split, held_out, random_crop_flip,  # noqa: F401
                               split_validation)
