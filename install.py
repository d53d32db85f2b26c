"""Run by the web UI at startup (AUTOMATIC1111, Forge, reForge: launch_utils.run_extension_installer).

Installs only what VAE Precision needs and the web UI lacks; the hosts normally ship both packages.
Never installs or upgrades torch (nor anything that would pull it in).
"""
import importlib.util
import subprocess
import sys

# import name -> pip requirement
REQUIREMENTS = {"psutil": "psutil", "safetensors": "safetensors"}


def missing(find_spec=importlib.util.find_spec):
    return [requirement for module, requirement in REQUIREMENTS.items() if find_spec(module) is None]


def _launch():
    try:
        import launch   # the web UI's launch.py (its folder is on PYTHONPATH when this runs)
        return launch
    except ImportError:
        return None


def install(launch=None, find_spec=importlib.util.find_spec):
    """Installs the missing requirements; returns the ones it installed."""
    needed = missing(find_spec)
    if not needed:
        return []
    launch = launch if launch is not None else _launch()
    installed = []
    for requirement in needed:
        if launch is not None:
            if launch.is_installed(requirement):
                continue
            launch.run_pip(f"install {requirement}", f"{requirement} for VAE Precision")
        else:
            subprocess.check_call([sys.executable, "-m", "pip", "install", requirement])
        installed.append(requirement)
    return installed


if __name__ == "__main__":
    install()
