"""Rig-only extension (not part of VAE Precision): measures the web UI's own decode and makes a big GPU
act as a small card.

- Wraps `modules/processing.py` `decode_latent_batch(model, batch, target_device=None, check_for_nans=False)`
  (same name and signature in A1111 1.10, Forge and reForge) and times it with the GPU synchronised, with
  or without VAE Precision, and records the peak GPU memory above what was allocated before the call. Each
  batch's totals go into the infotext as `Rig decode` and `Rig peak VRAM`.
- Blocker: `RIG_FREE_GB` set at start-up allocates a tensor while the scripts load, so that only that
  many GB stay free from then on (`RIG_BLOCK=startup`, the default when the variable is set). The route
  `POST /rig/config {"free_gb": N, "at": "decode"}` instead resizes the blocker right before each decode, so
  that N GB stay free beside whatever the web UI keeps resident then (`{"free_gb": null}` drops it).
- `GET /rig/state`: whether a decode is running now, and how many ran (to interrupt during a decode).
"""
import os
import threading
import time

import torch

from modules import processing, script_callbacks, scripts

GIB = 1024 ** 3
_state = {"decoding": False, "decodes": 0, "free_gb": None, "at": None, "blocker_gib": 0.0}
_batch = {"seconds": 0.0, "peak": 0, "calls": 0}
_blocker = []
_lock = threading.Lock()


def _cuda():
    return torch.cuda.is_available()


def _block(free_gb):
    """Hold GPU memory so that `free_gb` GB stay free (cached blocks are returned to the device first)."""
    _blocker.clear()
    if not _cuda() or free_gb is None:
        _state["blocker_gib"] = 0.0
        return
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    extra = int(free - free_gb * GIB)
    if extra > 0:
        _blocker.append(torch.empty(extra, dtype=torch.uint8, device="cuda"))
    _state["blocker_gib"] = round(max(extra, 0) / GIB, 3)


_original = processing.decode_latent_batch


def decode_latent_batch(*args, **kwargs):
    if _state["at"] == "decode":
        _block(_state["free_gb"])
    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    _state["decoding"] = True
    start = time.perf_counter()
    try:
        return _original(*args, **kwargs)
    finally:
        if _cuda():
            torch.cuda.synchronize()
            _batch["peak"] = max(_batch["peak"], torch.cuda.max_memory_allocated() - before)
        _batch["seconds"] += time.perf_counter() - start
        _batch["calls"] += 1
        _state["decoding"] = False
        _state["decodes"] += 1
        if _state["at"] == "decode":
            _blocker.clear()


processing.decode_latent_batch = decode_latent_batch

if os.environ.get("RIG_FREE_GB") and os.environ.get("RIG_BLOCK", "startup") == "startup":
    _state["free_gb"], _state["at"] = float(os.environ["RIG_FREE_GB"]), "startup"
    _block(_state["free_gb"])
    print(f"rig-probe: holding {_state['blocker_gib']} GiB so that {_state['free_gb']} GB stay free")


def _routes(_demo, app):
    from fastapi import Body

    @app.get("/rig/state")
    def rig_state():
        free = torch.cuda.mem_get_info()[0] / GIB if _cuda() else None
        return dict(_state, free_gib_now=free, cuda=_cuda(),
                    device=torch.cuda.get_device_name(0) if _cuda() else "cpu", torch=torch.__version__)

    @app.get("/rig/modules")
    def rig_modules():
        """Top-level packages loaded now, with where they came from (to see what a bundle must carry)."""
        import sys
        found = {}
        for name, module in list(sys.modules.items()):
            top = name.split(".")[0]
            path = getattr(module, "__file__", None) or ""
            if top not in found and path:
                found[top] = path
        return found

    @app.post("/rig/config")
    def rig_config(body: dict = Body(...)):
        with _lock:
            _state["free_gb"] = body.get("free_gb")
            _state["at"] = body.get("at", "decode") if _state["free_gb"] is not None else None
            if _state["at"] != "startup":
                _blocker.clear()
                _state["blocker_gib"] = 0.0
        return _state


script_callbacks.on_app_started(_routes)


class RigProbe(scripts.Script):
    def title(self):
        return "Rig probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        _batch.update(seconds=0.0, peak=0, calls=0)

    def postprocess_batch(self, p, *args, **kwargs):
        if _batch["calls"]:
            p.extra_generation_params["Rig decode"] = f"{_batch['seconds']:.4f} s/{_batch['calls']}"
            if _cuda():
                p.extra_generation_params["Rig peak VRAM"] = f"{_batch['peak'] / GIB:.3f} GiB"
        _batch.update(seconds=0.0, peak=0, calls=0)
