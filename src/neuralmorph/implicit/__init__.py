"""Implicit (signed-distance) head models: NPMs/DeepSDF-style global fields and NPHM-style anchored
local ensembles, with forward or backward expression deformation, streamed training samples,
coarse-to-fine mesh extraction and Broyden-inverted fitting to point clouds and depth sequences."""
