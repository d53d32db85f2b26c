"""Stand-in for modules/ui_components.py (reForge 3b56b268): InputAccordion(gr.Checkbox), as A1111 v1.10."""
import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or "input-accordion-0"
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value})

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)
