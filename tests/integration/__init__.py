"""Integration tier: Ray, subprocesses, whole jobs (the align, verification, WIDER FACE and training jobs); slow."""
