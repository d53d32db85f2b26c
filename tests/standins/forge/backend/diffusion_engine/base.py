"""Stand-in for backend/diffusion_engine/base.py (Forge dfdcbab6): ForgeObjects, ForgeDiffusionEngine."""


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):   # real: the same unet/clip/vae objects
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    def __init__(self, estimated_config=None, huggingface_components=None):
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.first_stage_model = None   # real: fix_for_webui_backward_compatibility sets it to None

    def get_first_stage_encoding(self, x):
        return x
