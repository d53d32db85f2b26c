"""The always-visible script's hooks, mixed into the host's `scripts.Script` by scripts/vae_precision.py
(kept here so the entry point holds no logic)."""
from . import runtime, ui


class ScriptHooks:
    def title(self):
        return ui.TITLE

    def show(self, is_img2img):
        from modules import scripts
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        built = ui.build(self)
        self.infotext_fields = built.infotext_fields
        self.paste_field_names = built.paste_field_names
        return built.inputs

    def before_process(self, p, *args):
        runtime.get().before_process(p)

    def process(self, p, *args):
        runtime.get().process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        runtime.get().before_sampling(p)

    def postprocess_batch(self, p, *args, **kwargs):
        runtime.get().postprocess_batch(p)

    def postprocess(self, p, processed, *args):
        runtime.get().postprocess(p)
