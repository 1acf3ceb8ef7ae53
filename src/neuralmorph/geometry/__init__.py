"""Geometry core: meshes in millimetres, sampling, distances, adjacency, boundaries, barycentrics, rotations,
cameras and ray casting (numpy in/out; `rotvec_to_matrix_torch` is the one torch function)."""

from .adjacency import face_edges, k_ring, vertex_adjacency, vertex_neighbours
from .barycentric import barycentric
from .boundary import boundary_edges, neck_plane, on_boundary
from .camera import Camera, fibonacci_sphere, look_at, protocol_cameras
from .distance import closest_points, nearest_neighbors, signed_distance
from .mesh import UNITS_MM, Mesh, load_mesh, load_points, save_mesh
from .raycast import RayCaster, backproject, render_depth, render_depths
from .rotation import rotvec_to_matrix, rotvec_to_matrix_torch
from .sampling import farthest_point_sampling, sample_barycentrics, sample_surface

__all__ = [
    "UNITS_MM", "Mesh", "load_mesh", "load_points", "save_mesh",
    "sample_surface", "sample_barycentrics", "farthest_point_sampling",
    "face_edges", "vertex_adjacency", "vertex_neighbours", "k_ring",
    "barycentric", "boundary_edges", "on_boundary", "neck_plane",
    "rotvec_to_matrix", "rotvec_to_matrix_torch",
    "nearest_neighbors", "closest_points", "signed_distance",
    "Camera", "look_at", "fibonacci_sphere", "protocol_cameras",
    "RayCaster", "render_depth", "render_depths", "backproject",
]
