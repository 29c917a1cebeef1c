"""Training data of the dense heads: a segmentation dataset (the layouts `un2clip eval seg` reads) as a Source."""

from __future__ import annotations

from pathlib import Path

from un2clip.data.sources import MaskedRecord, Source, check_index, decode_image
from un2clip.eval.seg.datasets import SegDataset, load_dataset, read_label


class SegmentationSource(Source):
    """Image/label-map pairs of a segmentation dataset; a record carries its (H, W) uint8 label map."""

    kind = "segmentation"

    def __init__(self, dataset: SegDataset) -> None:
        self.dataset = dataset
        self.spec = str(dataset.root)
        self.labels = [names[0] for names in dataset.classes]  # the name each class is trained on

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, i: int) -> str:
        path = self.dataset.images[check_index(i, len(self))]
        return str(Path(path).relative_to(self.dataset.root)) if self.dataset.root in path.parents else str(path)

    def load(self, i: int) -> MaskedRecord | None:
        i = check_index(i, len(self))
        image = decode_image(self.dataset.images[i])
        if image is None:
            return None
        try:
            mask = read_label(self.dataset.labels[i], self.dataset.reduce_zero_label)
        except (OSError, ValueError):
            return None
        if mask.shape != (image.height, image.width):
            raise ValueError(f"{self.dataset.labels[i]}: label map {mask.shape[1]}x{mask.shape[0]} differs from its "
                             f"image {self.dataset.images[i]} ({image.width}x{image.height})")
        return MaskedRecord(image=image.convert("RGB"), text=None, key=self.key(i), mask=mask)


def open_segmentation(data: str | Path, layout: str = "generic", split: str = "train",
                      classes: str | Path | None = None) -> SegmentationSource:
    """A dataset folder in ``layout`` (generic: images/, masks/, classes.txt; or a named mmsegmentation layout
    and its ``split``, e.g. ade20k training) -> SegmentationSource."""
    return SegmentationSource(load_dataset(data, layout, classes=classes, split=split))
