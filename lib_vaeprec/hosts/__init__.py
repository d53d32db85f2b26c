"""The web UI side of VAE Precision: AUTOMATIC1111, Forge and reForge.

Every submodule is imported here, up front: A1111 puts the extension's folder on sys.path only while it
loads the extension's scripts, so a lazy import of our own modules later could fail.
"""
from . import detect, holds, patches, settings, session, adapter  # noqa: F401
from . import a1111, forge, reforge, ui, runtime, script  # noqa: F401
