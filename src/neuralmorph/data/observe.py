"""Partial observations of a head, as NPHM's test protocol makes them: one depth view, a few points.

A camera 650 mm from the head looks at it from a random near-frontal direction (a Fibonacci-sphere
direction with 0.6 < z < 0.9 and |y| < 0.55, z being where the face looks); the depth map is
back-projected, back-facing hits are dropped, and `n_points` are drawn with replacement. The field of
view is NPHM's (f = 1.5 × image width); the image is smaller because 2,500 points need far fewer pixels.

`observe_points` and `observe_depth` make several such views of any mesh at once (what `neuralmorph data
observe` writes): partial point clouds, or depth frames in the format `fit --target` reads as a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralmorph.data.observations import DepthFrame
from neuralmorph.errors import InputError
from neuralmorph.geometry.camera import Camera, fibonacci_sphere, look_at
from neuralmorph.geometry.raycast import RayCaster

NEAR_FRONTAL_Z = (0.6, 0.9)
NEAR_FRONTAL_MAX_Y = 0.55


def near_frontal_directions(n_sphere: int = 200) -> np.ndarray:
    """(K, 3) unit directions from the head to candidate cameras, NPHM's near-frontal band."""
    d = fibonacci_sphere(n_sphere)
    keep = (d[:, 2] > NEAR_FRONTAL_Z[0]) & (d[:, 2] < NEAR_FRONTAL_Z[1]) & (np.abs(d[:, 1]) < NEAR_FRONTAL_MAX_Y)
    return d[keep]


def single_view_points(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, n_points: int = 2500,
                       distance_mm: float = 650.0, image_size: int = 320,
                       direction: np.ndarray | None = None) -> tuple[np.ndarray, Camera]:
    """Draw a single-view partial point cloud of a head.

    vertices: (N, 3) float mm (head in the canonical orientation, +z where the face looks);
    faces: (F, 3) int; rng: the caller's generator; direction: (3,) unit, default a random near-frontal one.
    Returns points (n_points, 3) float64 mm and the camera that saw them.
    """
    v = np.asarray(vertices, np.float64)
    if direction is None:
        candidates = near_frontal_directions()
        direction = candidates[rng.integers(len(candidates))]
    cam = observation_camera(v, direction, distance_mm, image_size)
    _, hits, _ = front_hits(RayCaster(v, np.asarray(faces, np.int64)), cam)
    if len(hits) == 0:
        raise ValueError("the camera sees no front-facing surface")
    return hits[rng.integers(0, len(hits), n_points)], cam


def box_centre(vertices: np.ndarray) -> np.ndarray:
    """(3,) float64 centre of the bounding box of (N, 3) vertices: what every observation camera looks at."""
    v = np.asarray(vertices, np.float64)
    return 0.5 * (v.min(axis=0) + v.max(axis=0))


def observation_camera(vertices: np.ndarray, direction: np.ndarray, distance_mm: float = 650.0,
                       image_size: int = 320) -> Camera:
    """The protocol's camera for one view of a head: `distance_mm` from its bounding-box centre along
    `direction` (3,) unit (from the head toward the camera), looking at the centre with world +y up, a
    square image of `image_size` pixels, f = 1.5 × image width, centred principal point.

    vertices: (N, 3) float mm.
    """
    centre = box_centre(vertices)
    focal = 1.5 * image_size
    return Camera(focal, focal, (image_size - 1) / 2, (image_size - 1) / 2, image_size, image_size,
                  look_at(centre + distance_mm * np.asarray(direction, np.float64), centre))


def front_hits(caster: RayCaster, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a camera sees of a mesh's front side: pixel ids (K,) int64 (row-major, sorted), world points
    (K, 3) float64 mm and camera depths z (K,) float64 mm of the first hits whose face turns toward the
    camera. Back-facing first hits (the inside of an open mesh, seen through a hole) are dropped: a
    sensor would not return them as head surface, and NPHM's protocol drops them too."""
    pix, face_idx, t, dirs = caster.cast(camera)
    front = np.einsum("ij,ij->i", dirs, caster.face_normals[face_idx]) < -0.01
    t, dirs = t[front], dirs[front]
    return pix[front], camera.position + t[:, None] * dirs, t * (dirs @ camera.rotation[2])


def random_near_frontal(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) float64 unit directions drawn from `near_frontal_directions`: all different while there
    are enough candidates (20), then with repeats."""
    candidates = near_frontal_directions()
    return candidates[rng.choice(len(candidates), n, replace=n > len(candidates))]


@dataclass(frozen=True, eq=False)
class View:
    """One observation of a mesh: the camera, the direction it looked from (3,) unit, from the head
    toward the camera, and how many pixels saw front-facing surface."""

    camera: Camera
    direction: np.ndarray
    visible_pixels: int

    def as_dict(self) -> dict:
        """JSON-ready: direction, camera position and target (mm), intrinsics, camera_to_world (OpenCV
        axes, mm), image size and visible pixels."""
        cam = self.camera
        w2c = cam.world_to_camera
        c2w = np.eye(4)
        c2w[:3, :3] = w2c[:3, :3].T
        c2w[:3, 3] = cam.position
        return {"direction": self.direction.tolist(), "position_mm": cam.position.tolist(),
                "intrinsics": [[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]],
                "camera_to_world": c2w.tolist(), "width": cam.width, "height": cam.height,
                "visible_pixels": self.visible_pixels}


def _views(vertices: np.ndarray, faces: np.ndarray, directions: np.ndarray, distance_mm: float, image_size: int,
           where: str):
    """Cast every direction (V, 3): yields (View, pixel ids, points, depths) per view; InputError naming
    `where` when a view sees no front-facing surface or the camera would sit inside the mesh's bounds."""
    v = np.asarray(vertices, np.float64)
    dirs = np.asarray(directions, np.float64).reshape(-1, 3)
    norms = np.linalg.norm(dirs, axis=1)
    if len(dirs) == 0 or not (np.isfinite(norms).all() and (norms > 0).all()):
        raise InputError("directions", "need at least one finite, non-zero direction")
    radius = float(np.linalg.norm(v - box_centre(v), axis=1).max())
    if not distance_mm > radius:
        raise InputError(where, f"reaches {radius:.1f} mm from its centre, so a camera {distance_mm:g} mm away "
                                "would sit inside it; raise the camera distance (or check the units)")
    caster = RayCaster(v, np.asarray(faces, np.int64))
    for i, d in enumerate(dirs / norms[:, None]):
        cam = observation_camera(v, d, distance_mm, image_size)
        pix, pts, depth = front_hits(caster, cam)
        if len(pts) == 0:
            raise InputError(where, f"view {i} (direction {np.round(d, 3).tolist()}) sees no front-facing surface; "
                                    "check the direction, the image size and that the faces are wound outward")
        yield View(cam, d, len(pts)), pix, pts, depth


def observe_points(vertices: np.ndarray, faces: np.ndarray, directions: np.ndarray, rng: np.random.Generator,
                   n_points: int = 2500, distance_mm: float = 650.0, image_size: int = 320,
                   where: str = "mesh") -> list[tuple[np.ndarray, View]]:
    """Single-view partial point clouds of a mesh, one per direction, as `single_view_points` draws them.

    vertices: (N, 3) float mm; faces: (F, 3) int; directions: (V, 3) from the head toward each camera
    (normalised here); rng: draws the points (n_points per view, with replacement, from the front-facing
    hits); where: what errors name (the mesh file).
    Returns per view the points (n_points, 3) float64 mm and its View.
    """
    if n_points < 1:
        raise InputError("n_points", f"must be >= 1, got {n_points}")
    return [(pts[rng.integers(0, len(pts), n_points)], view)
            for view, _, pts, _ in _views(vertices, faces, directions, distance_mm, image_size, where)]


def observe_depth(vertices: np.ndarray, faces: np.ndarray, directions: np.ndarray, distance_mm: float = 650.0,
                  image_size: int = 320, where: str = "mesh") -> list[tuple[DepthFrame, View]]:
    """Depth images of a mesh, one per direction, with the cameras that took them.

    Each frame holds the camera z (mm, float32) of every pixel that sees front-facing surface and 0 elsewhere
    (the head alone, as `load_target` wants a depth sequence), so back-projecting it gives exactly the
    points `observe_points` draws from. vertices: (N, 3) float mm; faces: (F, 3) int; directions: (V, 3).
    Returns per view a DepthFrame named "view NNN" and its View.
    """
    out = []
    for i, (view, pix, _, depth) in enumerate(_views(vertices, faces, directions, distance_mm, image_size, where)):
        cam = view.camera
        image = np.zeros(cam.height * cam.width, np.float32)
        image[pix] = depth
        info = view.as_dict()
        out.append((DepthFrame(image.reshape(cam.height, cam.width), np.array(info["intrinsics"]),
                               np.array(info["camera_to_world"]), name=f"view {i:03d}"), view))
    return out
