"""Stand-in for modules/shared_state.py State (A1111 v1.10): the flags processing checks."""


class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False

    def interrupt(self):   # real: State.interrupt
        self.interrupted = True
