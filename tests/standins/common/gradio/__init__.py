"""Stand-in for gradio: only the components and keyword arguments that both gradio 3.41.2 (A1111 v1.10,
reForge main) and gradio 4.40.0 (Forge main) accept. An argument outside that intersection raises TypeError,
so a test building the UI proves it stays within both."""

_COMMON = ("label", "elem_id", "elem_classes", "visible", "interactive", "info", "scale", "min_width")


class Block:
    _allowed = ()

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self._allowed) - set(_COMMON)
        if unknown:
            raise TypeError(f"{type(self).__name__} got arguments not common to gradio 3.41 and 4: {sorted(unknown)}")
        self.kwargs = kwargs
        for name, value in kwargs.items():
            setattr(self, name, value)
        for name in ("label", "elem_id", "value", "choices"):
            if not hasattr(self, name):
                setattr(self, name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):   # gradio 3: _js=, gradio 4: js=
        return None


class Checkbox(Block):
    # gradio 3.41 components/checkbox.py Checkbox.__init__(value=False, *, label, info, ...)
    _allowed = ("value",)


class Radio(Block):
    # gradio 3.41 components/radio.py Radio.__init__(choices=None, *, value=None, ...)
    _allowed = ("choices", "value")


class Dropdown(Block):
    # gradio 3.41 components/dropdown.py Dropdown.__init__(choices=None, *, value=None, multiselect=None, allow_custom_value=False, ...)
    _allowed = ("choices", "value", "multiselect", "allow_custom_value")


class Slider(Block):
    # gradio 3.41 components/slider.py Slider.__init__(minimum=0, maximum=100, value=None, *, step=None, ...)
    _allowed = ("minimum", "maximum", "value", "step")


class Textbox(Block):
    _allowed = ("value", "lines")


class HTML(Block):
    _allowed = ("value",)


class Accordion(Block):
    # gradio 3.41 layouts.py Accordion.__init__(label, *, open=True, visible=True, elem_id=None, ...)
    _allowed = ("open",)


class Row(Block):
    _allowed = ("variant", "equal_height")


class Column(Block):
    _allowed = ("variant",)


class Group(Block):
    pass


class Blocks(Block):
    pass


def update(**kwargs):
    return {"__type__": "update", **kwargs}
