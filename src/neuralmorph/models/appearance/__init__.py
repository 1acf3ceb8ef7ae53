"""The appearance family: 3D Gaussians bound to a mesh model's triangles, attributes from an identity field."""
