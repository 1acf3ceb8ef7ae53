"""The embedded head generator: registered heads in correspondence, plus raw scans of them.

Identities blend the head model's macro phenotype targets (continuous gender, age, ethnicity, muscle and
weight, so the population is neither Gaussian nor linear in its parameters) with random local targets.
Expressions are sparse face-unit activations plus jaw opening and neck rotation through the skinning
weights; rotations make expressions non-linear in vertex space, as real faces are. Expression 0 of
each subject is neutral. Every subject draws from its own generator seeded by (seed, subject index), so
a dataset is byte-identical for the same seed and growing `subjects` keeps the earlier subjects.
Identities, never single heads, are split into train, val and test (`identity_splits`).

With `images`, every head is also photographed: each identity gets an albedo texture
(`data.appearance`, seeded by (seed, subject index, 1)), each head a light (seeded by (seed, subject
index, expression index, 2), shared by its views, so the views of one head are consistent) and `views`
random cameras around it; `data.textured_render` ray-casts the pictures, written as sRGB PNGs with
coverage masks into images/, the cameras into transforms.json (`data.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from neuralmorph.atomic import atomic_dir, check_output_dir
from neuralmorph.data.dataset import Head, HeadDataset
from neuralmorph.data.head_model import HeadModel, Phenotype
from neuralmorph.data.scan import ScanConfig, raw_scan
from neuralmorph.errors import InputError
from neuralmorph.frame import Frame
from neuralmorph.geometry.mesh import save_mesh
from neuralmorph.outputs import Verb

# The jaw is articulated through the skinning weights, so the jawOpen blendshape stays out of the random pool.
_ARTICULATED_UNITS = ("jawOpen",)


@dataclass(frozen=True)
class SynthConfig(Verb):
    """Generate a dataset of synthetic registered heads and their raw scans."""

    out_kind = "dataset"

    out: Path
    """Output dataset folder (replaced atomically when the run succeeds)."""
    subjects: int = 20
    """Number of identities."""
    expressions: int = 5
    """Heads per identity, the first one neutral."""
    seed: int = 0
    """Random seed; the same seed gives byte-identical files."""
    test_fraction: float = 0.2
    """Fraction of all identities held out as the test split."""
    val_fraction: float = 0.1
    """Fraction of all identities held out as the validation split (what trainable families validate on
    during training); test + val must stay below 1."""
    scans: bool = True
    """Also write a raw scan (own topology, noise, holes, random pose) of every head."""
    scan_resolution_mm: float = 3.0
    """Mean edge length of the raw scans."""
    scan_noise_mm: float = 0.2
    """Std of the scans' sensor noise along the normal (0 for none)."""
    scan_holes: int = 2
    """Holes punched into each scan (0 for none)."""
    local_fraction: float = 0.3
    """Fraction of the local shape modifiers each identity uses."""
    max_jaw_deg: float = 20.0
    """Largest jaw opening of an expression."""
    max_neck_deg: float = 12.0
    """Largest neck rotation per axis of an expression."""
    images: bool = False
    """Also render posed images of every head (textured skin, lit) into images/ and transforms.json."""
    views: int = 8
    """Images per head (with --images): random views, yaw within +-90 degrees of the face, pitch within
    +-20, the camera far enough that the whole head fits."""
    image_size: int = 256
    """Width and height of the images in pixels (with --images)."""
    lighting: Literal["random", "studio"] = "random"
    """Light of each head's images (with --images): random (drawn per head, shared by its views) or
    studio (one fixed portrait set-up for every head)."""

    def __post_init__(self):
        if self.subjects < 1 or self.expressions < 1:
            raise InputError("--subjects/--expressions", f"need at least 1 of each, got {self.subjects} and {self.expressions}")
        if not 0 <= self.test_fraction < 1:
            raise InputError("--test-fraction", f"must be in [0, 1), got {self.test_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise InputError("--val-fraction", f"must be in [0, 1), got {self.val_fraction}")
        if not self.test_fraction + self.val_fraction < 1:
            raise InputError("--val-fraction", f"{self.val_fraction} plus --test-fraction {self.test_fraction} must "
                             "be below 1 (no identities would be left to train on)")
        identity_splits(self.subjects, self.test_fraction, self.val_fraction, self.seed)  # rounded counts leave training identities
        if not 0 <= self.local_fraction <= 1:  # NaN fails every comparison
            raise InputError("--local-fraction", f"must be in [0, 1], got {self.local_fraction}")
        for flag, deg in (("--max-jaw-deg", self.max_jaw_deg), ("--max-neck-deg", self.max_neck_deg)):
            if not 0 <= deg <= 90:
                raise InputError(flag, f"must be an angle in [0, 90] degrees (beyond it no head is left), got {deg}")
        if self.scans:
            ScanConfig(self.scan_resolution_mm, self.scan_noise_mm, self.scan_holes)  # its checks name the flags
        if self.images:
            if not 1 <= self.views <= 1000:
                raise InputError("--views", f"must be in [1, 1000], got {self.views}")
            if not 16 <= self.image_size <= 4096:
                raise InputError("--image-size", f"must be in [16, 4096] pixels, got {self.image_size}")
            if self.lighting not in ("random", "studio"):
                raise InputError("--lighting", f"must be random or studio, got {self.lighting!r}")


def identity_splits(subjects: int, test_fraction: float, val_fraction: float, seed: int) -> list[str]:
    """The split ("train", "val" or "test") of each of `subjects` identities, by identity index.

    One permutation seeded by (seed, 2**31) orders the identities: the first round(test_fraction × subjects)
    are test, the next round(val_fraction × subjects) val, the rest train. Test takes the permutation's head
    as it did before there was a val split, so a seed keeps its test identities whatever `val_fraction` is.
    """
    order = np.random.default_rng([seed, 2**31]).permutation(subjects)
    n_test = int(round(test_fraction * subjects))
    n_val = int(round(val_fraction * subjects))
    if n_val and n_test + n_val >= subjects:   # the val split must never take the last training identity
        raise InputError("--val-fraction", f"{n_test} test and {n_val} val identities of {subjects} leave none to "
                         "train on; lower --val-fraction or --test-fraction, or raise --subjects")
    split = ["train"] * subjects
    for rank, s in enumerate(order.tolist()):
        if rank < n_test:
            split[s] = "test"
        elif rank < n_test + n_val:
            split[s] = "val"
    return split


def sample_identity(model: HeadModel, rng: np.random.Generator, local_fraction: float) -> tuple[Phenotype, np.ndarray]:
    """A random adult: phenotype and local modifier values (L,) float64 in [-1, 1]."""
    ethnicity = rng.dirichlet([0.7, 0.7, 0.7])
    pheno = Phenotype(
        gender=float(rng.beta(0.6, 0.6)),        # mostly clearly female or male, some in between
        age=float(rng.uniform(0.45, 0.95)),      # MakeHuman's age scale: 0.5 is 25 years, 1.0 is 90
        african=float(ethnicity[0]), asian=float(ethnicity[1]), caucasian=float(ethnicity[2]),
        muscle=float(rng.beta(2.0, 2.0)),
        weight=float(rng.beta(2.0, 2.0)),
    )
    n_local = len(model.local_modifier_names)
    active = rng.uniform(size=n_local) < local_fraction
    local = np.where(active, np.clip(rng.normal(0.0, 0.35, size=n_local), -1.0, 1.0), 0.0)
    return pheno, local


def sample_expression(model: HeadModel, rng: np.random.Generator, max_jaw_deg: float,
                      max_neck_deg: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Sparse face units (52,) in [0, 1], jaw opening (radians) and neck rotation (3,) radians."""
    names = model.face_unit_names
    pool = np.array([i for i, n in enumerate(names) if n not in _ARTICULATED_UNITS])
    units = np.zeros(len(names))
    chosen = rng.choice(pool, size=int(rng.integers(1, 5)), replace=False)
    units[chosen] = rng.uniform(0.3, 1.0, size=len(chosen))
    jaw = float(np.deg2rad(max_jaw_deg) * rng.uniform()) if rng.uniform() < 0.6 else 0.0
    neck = np.deg2rad(max_neck_deg) * rng.uniform(-1, 1, size=3) * (rng.uniform() < 0.6)
    return units, jaw, neck


IMAGE_SUPERSAMPLE = 2
"""Rays per pixel side of `synthesize`'s images (2 x 2 per pixel, averaged)."""
MAX_YAW_DEG, MAX_PITCH_DEG = 90.0, 20.0
"""How far from the front `synthesize`'s cameras go: yaw about the vertical (profiles at +-90), pitch."""


def subject_appearance(texturer, seed: int, subject: int, gender: float):
    """The albedo texture and factors of synthetic subject `subject` (an `appearance.Appearance`): seeded by
    (seed, subject, 1); stubble comes with probability 0.7 x gender (MakeHuman: 1 male), nothing else
    depends on the shape."""
    return texturer.generate([seed, subject, 1], stubble_probability=0.7 * gender)


def head_images(vertices: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray, texture: np.ndarray,
                rng: np.random.Generator, views: int, size: int, lighting: str):
    """Render one head (vertices (N, 3) mm) from `views` random cameras drawn from `rng` (after its light).

    Returns the light (a `textured_render.Lighting`) and a list of (Camera, Rendering): cameras look at
    the bounding-box centre from yaw U(-90, 90) and pitch U(-20, 20) degrees, far enough that the head's
    bounding sphere fills 92% of the image (fov 30 degrees).
    """
    from neuralmorph.data.textured_render import Lighting, TexturedMesh, TexturedRenderer, orbit_camera

    light = Lighting.random(rng) if lighting == "random" else Lighting.studio()
    v = np.asarray(vertices, dtype=np.float64)
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    renderer = TexturedRenderer(TexturedMesh(v, faces, face_uvs, texture))
    out = []
    for _ in range(views):
        yaw, pitch = rng.uniform(-MAX_YAW_DEG, MAX_YAW_DEG), rng.uniform(-MAX_PITCH_DEG, MAX_PITCH_DEG)
        cam = orbit_camera(centre, radius, yaw, pitch, size)
        out.append((cam, renderer.render(cam, light, IMAGE_SUPERSAMPLE)))
    return light, out


def _write_head_images(folder: Path, name: str, shots, subject: str, expression: str, row: int) -> list:
    """PNGs (sRGB) and coverage masks of one head's renderings under folder/images/; their ImageFrames."""
    from neuralmorph.data.images import IMAGES_DIR, ImageFrame
    from neuralmorph.data.textured_render import srgb_encode
    from neuralmorph.render import png_bytes

    (folder / IMAGES_DIR).mkdir(exist_ok=True)
    frames = []
    for k, (cam, r) in enumerate(shots):
        image, mask = f"{IMAGES_DIR}/{name}_{k:03d}.png", f"{IMAGES_DIR}/{name}_{k:03d}.mask.png"
        (folder / image).write_bytes(png_bytes(srgb_encode(r.rgb)))
        (folder / mask).write_bytes(png_bytes(np.clip(np.rint(r.mask * 255.0), 0, 255).astype(np.uint8)))
        frames.append(ImageFrame(image, cam, subject=subject, expression=expression, registered=row, mask=mask))
    return frames


def synthesize(config: SynthConfig, model: HeadModel | None = None, progress: bool = True) -> HeadDataset:
    """Generate the dataset described by `config` and write it to `config.out`; returns it."""
    check_output_dir(config.out, "dataset", config.overwrite)  # before any work: never over a folder of the user's
    model = model or HeadModel.load()
    # Heads are stored centred on the template's bounding box, so the data sit around the origin.
    template_frame = Frame.fit(model.vertices)
    centre = template_frame.origin
    frame = Frame(np.zeros(3), np.eye(3), template_frame.mm_per_unit)

    split_of = identity_splits(config.subjects, config.test_fraction, config.val_fraction, config.seed)
    scan_cfg = ScanConfig(config.scan_resolution_mm, config.scan_noise_mm, config.scan_holes)

    heads, verts, frames = [], [], []
    params = {"phenotype": [], "local": [], "face_units": [], "jaw": [], "neck": []}
    texturer = None
    if config.images:
        from neuralmorph.data.appearance import HeadTexturer

        texturer = HeadTexturer(model)
    with atomic_dir(config.out, "dataset", config.overwrite) as tmp:
        for s in tqdm(range(config.subjects), desc="synth", unit="subject", disable=not progress):
            rng = np.random.default_rng([config.seed, s])
            pheno, local = sample_identity(model, rng, config.local_fraction)
            neutral = model.identity(pheno, local)
            look = subject_appearance(texturer, config.seed, s, pheno.gender) if config.images else None
            for e in range(config.expressions):
                if e == 0:
                    units, jaw, neck = np.zeros(len(model.face_unit_names)), 0.0, np.zeros(3)
                else:
                    units, jaw, neck = sample_expression(model, rng, config.max_jaw_deg, config.max_neck_deg)
                v = model.articulate(neutral + model.expression_offsets(units), jaw, neck) - centre
                subject, expression = f"subj{s:03d}", "neutral" if e == 0 else f"expr{e:02d}"
                scan_path = ""
                if config.scans:
                    scan, pose = raw_scan(v, model.faces, scan_cfg, rng)
                    scan_path = f"scans/{subject}_{expression}.ply"
                    save_mesh(tmp / scan_path, scan)
                    # The scan's landmarks, as a scanner operator would click them: registered ones in the scan's pose.
                    np.savetxt(tmp / scan_path.replace(".ply", ".landmarks.txt"),
                               pose.apply(v[model.landmark_ids]), fmt="%.4f")
                    params.setdefault("scan_pose", []).append(pose.matrix)
                if config.images:
                    light, shots = head_images(v.astype(np.float32), model.faces, model.face_uvs, look.texture,
                                               np.random.default_rng([config.seed, s, e, 2]),
                                               config.views, config.image_size, config.lighting)
                    frames += _write_head_images(tmp, f"{subject}_{expression}", shots, subject, expression, len(verts))
                    params.setdefault("appearance", []).append(look.factors.vector())
                    params.setdefault("light_sh", []).append(light.sh)
                    params.setdefault("light_key", []).append(np.r_[light.key_direction, light.key_color,
                                                                    light.specular, light.shininess])
                heads.append(Head(subject, expression, split_of[s], len(verts), scan_path))
                verts.append(v.astype(np.float32))
                params["phenotype"].append([pheno.gender, pheno.age, pheno.african, pheno.asian, pheno.caucasian,
                                            pheno.muscle, pheno.weight])
                params["local"].append(local)
                params["face_units"].append(units)
                params["jaw"].append(jaw)
                params["neck"].append(neck)
        one_hot = np.zeros((len(model.vertices), len(model.region_names)), np.float32)
        one_hot[np.arange(len(model.vertices)), model.region_labels] = 1.0
        dataset = HeadDataset(
            heads,
            vertices=np.stack(verts),
            faces=model.faces,
            landmark_ids=model.landmark_ids,
            region_names=tuple(model.region_names),
            region_weights=one_hot,
            frame=frame,
            extras={f"synth.{k}": np.asarray(val, dtype=np.float64) for k, val in params.items()},
            images=frames,
        )
        dataset.save(tmp)
    dataset.folder = Path(config.out)  # saved in a temporary sibling, renamed into place
    return dataset
