"""Mechanisms shared by the detector and pipeline packages: crash-safe file writes
(:mod:`common.fsio`) and the one Ray start policy (:mod:`common.ray_init`). No torch, no Ray at import."""
