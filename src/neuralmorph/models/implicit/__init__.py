"""Signed-distance families: NPMs/DeepSDF-style global fields and NPHM-style anchored local ensembles."""
