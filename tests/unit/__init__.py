"""Unit tier: no Ray, no subprocess, no whole job; each file runs in seconds.

``tests/unit/conftest.py`` enforces the first two."""
