"""Stand-in for modules/scripts.py (A1111 v1.10; Forge and reForge add process_before_every_sampling, which
1.10 has too): Script, AlwaysVisible and the part of ScriptRunner that calls always-on scripts."""
import logging
import re

import standin_webui

AlwaysVisible = object()   # real: scripts.AlwaysVisible


class Script:   # real: class Script (names and signatures of the hooks used here)
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):   # real: Script.elem_id
        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f'script_{tabname}{title}_{item_id}'


class ScriptRunner:
    """real: ScriptRunner.create_script_ui (args_from/args_to, infotext_fields) and the hook dispatchers,
    which call only scripts overriding the hook (create_ordered_callbacks_list) and report errors."""

    def __init__(self, scripts, is_img2img=False):
        self.alwayson_scripts, self.inputs, self.infotext_fields, self.paste_field_names = [], [], [], []
        for script in scripts:
            script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
            script.alwayson = script.show(is_img2img) is AlwaysVisible
            script.args_from = len(self.inputs)
            controls = script.ui(is_img2img) or []
            script.name = script.title().lower()
            self.infotext_fields += script.infotext_fields or []
            self.paste_field_names += script.paste_field_names or []
            self.inputs += controls
            script.args_to = len(self.inputs)
            self.alwayson_scripts.append(script)

    def default_args(self):   # real: api.init_default_script_args uses each control's .value
        return [c.value for c in self.inputs]

    def _call(self, method, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            if getattr(type(script), method, None) == getattr(Script, method, None):
                continue
            args = p.script_args[script.args_from:script.args_to]
            try:
                getattr(script, method)(p, *extra, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - real: errors.report(...)
                logging.getLogger("standin").exception("script %s.%s", script.name, method)
                standin_webui.errors_reported.append(f"{script.name}.{method}: {error!r}")

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)
