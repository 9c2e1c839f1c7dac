"""Data: sources, splits and fingerprints, batches, the test quarantine and augmentation.

One concern a module:

- :mod:`~trainkit.data.sources`: ``digits`` (built in, scikit-learn), ``npz``, torchvision's
  ``mnist`` / ``fashion_mnist`` / ``cifar10`` (local files only) and a user's
  ``package.module:function``; :mod:`~trainkit.data.images`: image folders (manifest, streaming);
- :mod:`~trainkit.data.splits`: stratified splits, normalization, fingerprints;
- :mod:`~trainkit.data.batches`: in-memory index batching, folder streaming;
- :mod:`~trainkit.data.quarantine`: the test split sealed by a caller's :class:`Quarantine` policy;
- :mod:`~trainkit.data.augment`: training-time augmentation;
- :mod:`~trainkit.data.bundle`: :func:`load_data` and the :class:`DataBundle` it returns.

The data layer knows no phase names: a run folder (:class:`trainkit.run.RunFolder`) tells it where
records live (:class:`DataStore`) and whether the test split is open (:class:`Quarantine`).
"""

from trainkit.data.augment import augment_batch
from trainkit.data.batches import BatchIterable, IndexBatches
from trainkit.data.bundle import DataBundle, DataStore, check_source, load_data, load_source
from trainkit.data.images import ImageFolderData, scan_image_folder
from trainkit.data.quarantine import Quarantine, SealedDataset
from trainkit.data.sources import Source, check_labels, in_memory_source
from trainkit.data.splits import normalize, stratified_split

__all__ = [
    "augment_batch",
    "BatchIterable",
    "IndexBatches",
    "DataBundle",
    "DataStore",
    "check_source",
    "load_data",
    "load_source",
    "ImageFolderData",
    "scan_image_folder",
    "Quarantine",
    "SealedDataset",
    "Source",
    "check_labels",
    "in_memory_source",
    "normalize",
    "stratified_split",
]
