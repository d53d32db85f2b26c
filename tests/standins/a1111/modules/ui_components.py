"""Stand-in for modules/ui_components.py (A1111 v1.10): InputAccordion(gr.Checkbox), a hidden checkbox whose
value is the accordion's open state; a context manager entering its gr.Accordion."""
import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):   # real: InputAccordion.__init__(self, value, **kwargs)
        self.accordion_id = kwargs.get("elem_id") or "input-accordion-0"
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value})

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)
