"""Which web UI is running us. Decided from the packages the host ships, without importing them:

- Forge (lllyasviel/stable-diffusion-webui-forge, the "Forge2" backend): `backend/patcher/vae.py` + `modules_forge`;
- reForge (Panchovix/stable-diffusion-webui-reForge main): `ldm_patched/modules/sd.py` + `modules_forge`, no `backend`;
- AUTOMATIC1111: neither.

Forge and reForge have no `__init__.py` in those folders (namespace packages), so the check looks at
the files inside the package's search locations rather than trusting any package of that name.
"""
import importlib.util
import os

A1111 = "a1111"
FORGE = "forge"
REFORGE = "reforge"


def _package_has(name, relative_file=None):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):   # ValueError: a module in sys.modules without __spec__
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    if relative_file is None:
        return True
    return any(os.path.isfile(os.path.join(location, relative_file))
               for location in spec.submodule_search_locations)


def detect():
    if _package_has("modules_forge"):
        if _package_has("backend", os.path.join("patcher", "vae.py")):
            return FORGE
        if _package_has("ldm_patched", os.path.join("modules", "sd.py")):
            return REFORGE
    return A1111
