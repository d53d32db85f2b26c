"""Which web UI: A1111, Forge (`backend`), reForge (`ldm_patched` + `modules_forge`)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, forge, reforge  # noqa: E402,F401

from lib_vaeprec.hosts import detect, runtime  # noqa: E402
from lib_vaeprec.hosts.a1111 import A1111Adapter  # noqa: E402
from lib_vaeprec.hosts.forge import ForgeAdapter  # noqa: E402
from lib_vaeprec.hosts.reforge import ReForgeAdapter  # noqa: E402


def test_a1111(a1111):
    assert detect.detect() == detect.A1111
    assert isinstance(a1111.start().adapter, A1111Adapter)


def test_forge(forge):
    assert detect.detect() == detect.FORGE
    assert isinstance(forge.start().adapter, ForgeAdapter)


def test_reforge(reforge):
    assert detect.detect() == detect.REFORGE
    assert isinstance(reforge.start().adapter, ReForgeAdapter)


def test_a_folder_named_backend_is_not_forge(tmp_path, monkeypatch, a1111):
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "server.py").write_text("")
    (tmp_path / "modules_forge").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert detect.detect() == detect.A1111
    for name in ("backend", "modules_forge"):
        sys.modules.pop(name, None)


def test_adapters_table_covers_every_host():
    assert set(runtime.ADAPTERS) == {detect.A1111, detect.FORGE, detect.REFORGE}
