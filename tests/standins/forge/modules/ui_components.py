"""Stand-in for modules/ui_components.py (Forge dfdcbab6): InputAccordion is a function returning an
InputAccordionImpl(gr.Checkbox)."""
import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    def __init__(self, value=None, setup=False, **kwargs):   # real: InputAccordionImpl.__init__(value=None, setup=False, **kwargs)
        self.accordion_id = kwargs.get("elem_id") or "input-accordion-0"
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value})

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)


def InputAccordion(value=None, **kwargs):   # real: def InputAccordion(value=None, **kwargs)
    return InputAccordionImpl(value=value, setup=True, **kwargs)
