"""Geometry core: meshes in millimetres, sampling, distances, cameras and ray casting (numpy in/out)."""

from .camera import Camera, fibonacci_sphere, look_at, protocol_cameras
from .distance import closest_points, nearest_neighbors, signed_distance
from .mesh import UNITS_MM, Mesh, load_mesh, load_points, save_mesh
from .raycast import RayCaster, backproject, render_depth, render_depths
from .sampling import sample_surface

__all__ = [
    "UNITS_MM", "Mesh", "load_mesh", "load_points", "save_mesh",
    "sample_surface",
    "nearest_neighbors", "closest_points", "signed_distance",
    "Camera", "look_at", "fibonacci_sphere", "protocol_cameras",
    "RayCaster", "render_depth", "render_depths", "backproject",
]
