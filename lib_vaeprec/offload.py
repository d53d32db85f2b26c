"""Where the VAE's weights live between and during calls.

keep:       wherever the host put them.
after_use:  on the accelerator during a call, in pinned CPU memory between calls. Inference never
            writes the weights, so the way back costs nothing: the CPU copy made the first time is reused.
sequential: in pinned CPU memory; each layer's weights visit the accelerator only for its forward.
cpu:        on the CPU; the whole call runs there.
"""
import torch

from .casting import version_of
from .tensor_slots import get, set_data, slots


def _leaf_modules(module):
    return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))
            or any(b is not None for b in m._buffers.values())]


class Offloader:
    def __init__(self, mode):
        self.mode = mode
        self.home = None          # device the host keeps the VAE on
        self._mirrors = {}        # (id(owner), store, key) -> (cpu tensor, fingerprint)
        self._hooks = []

    def compute_device(self, module, input_device):
        if self.mode == "cpu":
            return torch.device("cpu")
        home = self.home or _module_device(module)
        if home.type != "cpu":
            return home
        return torch.device(input_device)

    def _to_cpu(self, slot, tensor):
        owner, store, key = slot
        mirror_key = (id(owner), store, key)
        mirror = self._mirrors.get(mirror_key)
        if tensor.device.type == "cpu":
            return
        version = version_of(tensor)
        if mirror is None or mirror[1] != (tensor.dtype, version) or mirror[0].shape != tensor.shape:
            cpu = tensor.detach().to("cpu")
            if torch.cuda.is_available():
                cpu = cpu.pin_memory()
            mirror = (cpu, (tensor.dtype, version))
            self._mirrors[mirror_key] = mirror
        set_data(slot, mirror[0])

    @staticmethod
    def _upload(module, device, recurse=True):
        for slot in slots(module, recurse):
            tensor = get(slot)
            if tensor.device != device:
                set_data(slot, tensor.to(device, non_blocking=True))

    def _offload(self, module, recurse=True):
        for slot in slots(module, recurse):
            self._to_cpu(slot, get(slot))

    def before_call(self, module, device):
        if self.home is None:
            self.home = _module_device(module)
        if self.mode == "after_use":
            self._upload(module, device)
        elif self.mode == "cpu":
            self._offload(module)
        elif self.mode == "sequential":
            self._offload(module)
            self._install_layer_hooks(module, device)

    def after_call(self, module):
        if self.mode == "after_use":
            self._offload(module)
        elif self.mode == "sequential":
            self._remove_layer_hooks()

    def _install_layer_hooks(self, module, device):
        for leaf in _leaf_modules(module):
            def pre(m, args, device=device):
                self._upload(m, device, recurse=False)
            def post(m, args, output):
                self._offload(m, recurse=False)
            self._hooks.append(leaf.register_forward_pre_hook(pre))
            self._hooks.append(leaf.register_forward_hook(post))

    def _remove_layer_hooks(self):
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def return_home(self, module):
        """Puts every weight back on the device the host had the VAE on."""
        self._remove_layer_hooks()
        if self.home is not None:
            self._upload(module, self.home)
            if self.home.type == "cuda":
                torch.cuda.synchronize(self.home)
        self._mirrors.clear()
        self.home = None


def _module_device(module):
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
