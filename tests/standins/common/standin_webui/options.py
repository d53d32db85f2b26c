"""Stand-in for modules/options.py (A1111 v1.10; same in Forge and reForge): OptionInfo, Options."""
import standin_webui


class OptionInfo:
    # real: OptionInfo.__init__(self, default=None, label="", component=None, component_args=None, onchange=None,
    #       section=None, refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
    #       category_id=None)
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.category_id, self.infotext = onchange, section, category_id, infotext
        self.comment_before, self.comment_after, self.do_not_save = comment_before, comment_after, False

    def info(self, info):   # real: OptionInfo.info, appends an <span class='info'> to comment_after
        self.comment_after += f"<span class='info'>({info})</span>"
        return self


class Options:
    # real: class Options: data / data_labels; __getattr__ falls back to the label's default
    typemap = {int: float}   # real: Options.typemap

    def __init__(self, data_labels):
        super().__setattr__("data_labels", dict(data_labels))
        super().__setattr__("data", {k: v.default for k, v in data_labels.items()})

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info):   # real: Options.add_option(self, key, info)
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def set(self, key, value, is_api=False, run_callbacks=True):   # real: Options.set, no validation of value
        old = self.data.get(key)
        if old == value:
            return False
        info = self.data_labels[key]        # real: an unknown key raises KeyError
        self.data[key] = value
        if run_callbacks and info is not None and info.onchange is not None:
            try:
                info.onchange()
            except Exception:
                self.data[key] = old
                standin_webui.errors_reported.append(f"onchange {key}")
        return True

    def onchange(self, key, func, call=True):   # real: Options.onchange
        self.data_labels[key].onchange = func
        if call:
            func()
