# Stand-in for modules_forge/forge_version.py (reForge 3b56b268).
version = '1.0.0v2-v1.10.1RC'
