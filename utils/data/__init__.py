"""Datasets: what each one is (datasets.py, folders.py), where its files come from offline
(offline.py), how they are read safely (safe_pickle.py), and the batches training sees: tensors
sliced on the device (loader.py) or images streamed through a DataLoader (stream.py)."""
from utils.data.datasets import (DATA_LOADERS, DATASETS, DatasetSpec, dataset_names,  # noqa: F401
                                 get_spec, load_dataset, register_dataset)
from utils.data.folders import FOLDER_DATASETS, FolderSpec, folder_spec  # noqa: F401
from utils.data.loader import (BatchLoader, Split, held_out, random_crop_flip,  # noqa: F401
                               split_validation)
from utils.data.stream import StreamSplit  # noqa: F401
