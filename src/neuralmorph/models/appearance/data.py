"""What the appearance family trains on: a split's posed images, each with the registered head it shows."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.images import load_image, load_mask
from neuralmorph.errors import InputError


class ImageTrainData(torch.utils.data.Dataset):
    """The posed images of one split whose frames link to a registered head (`ImageFrame.registered`).

    An item: {"image": (H, W, 3) float32 in [0, 1] (as stored: sRGB for 8-bit files), "mask": (H, W)
    float32 (ones when the frame has none), "vertices": (V, 3) float32 mm (the head it shows),
    "viewmat": (4, 4) float32 world-to-camera (OpenCV), "K": (3, 3) float32 intrinsics, "subject": int64
    (index into `subjects`)}. Images are kept in memory as 8-bit (a 256² RGB image is 192 kB).
    """

    def __init__(self, dataset: HeadDataset, split: str = "train", progress: bool = True):
        where = dataset.where
        if not dataset.images:
            raise InputError(where, "holds no posed images (transforms.json): the appearance family trains on "
                                    "images (e.g. `neuralmorph data synth --images`)")
        if dataset.folder is None:
            raise InputError(where, "the dataset has no folder to read its images from")
        split_of = {h.registered: h.split for h in dataset.heads if h.registered >= 0}
        frames = [f for f in dataset.images if split_of.get(f.registered) == split]
        if not frames:
            linked = sum(f.registered >= 0 for f in dataset.images)
            raise InputError(where, f"no posed image of the {split!r} split shows a registered head ({linked} of "
                                    f"{len(dataset.images)} images are linked to one): the Gaussians ride on each "
                                    "image's registered head")
        sizes = {(f.camera.width, f.camera.height) for f in frames}
        if len(sizes) > 1:
            raise InputError(where, f"the {split!r} images come in several sizes ({sorted(sizes)}): "
                                    "resize them to one size to train on them")
        self.subjects = sorted({f.subject for f in frames})
        index = {s: i for i, s in enumerate(self.subjects)}
        self.frames = frames
        self.vertex_rows = np.array([f.registered for f in frames], np.int64)
        self.vertices = dataset.vertices
        images, masks = [], []
        for f in tqdm(frames, desc="load images", unit="image", disable=not progress):
            images.append(np.round(load_image(f.image_path(dataset.folder)) * 255).astype(np.uint8))
            m = f.mask_path(dataset.folder)
            masks.append(np.round(load_mask(m) * 255).astype(np.uint8) if m is not None
                         else np.full(images[-1].shape[:2], 255, np.uint8))
        self.images, self.masks = np.stack(images), np.stack(masks)
        self.subject_ids = np.array([index[f.subject] for f in frames], np.int64)
        self.viewmats = np.stack([f.camera.world_to_camera for f in frames]).astype(np.float32)
        self.Ks = np.stack([f.camera.intrinsics for f in frames]).astype(np.float32)

    def check_topology(self, n_vertices: int) -> None:
        """InputError unless the dataset's registered heads have the mesh model's `n_vertices`."""
        if self.vertices.shape[1] != n_vertices:
            raise InputError("--model.geometry", f"the mesh model's heads have {n_vertices} vertices, the dataset's "
                                                 f"{self.vertices.shape[1]}: not the same topology")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(self.images[i].astype(np.float32) / 255),
                "mask": torch.from_numpy(self.masks[i].astype(np.float32) / 255),
                "vertices": torch.from_numpy(np.asarray(self.vertices[self.vertex_rows[i]], np.float32)),
                "viewmat": torch.from_numpy(self.viewmats[i]), "K": torch.from_numpy(self.Ks[i]),
                "subject": torch.tensor(self.subject_ids[i])}
