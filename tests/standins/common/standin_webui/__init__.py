"""Pieces the three web UIs share (all three derive from AUTOMATIC1111 v1.10's `modules/`); each host's
stand-in `modules` package re-exports them under the real module names."""
errors_reported = []   # what the real code would log through modules.errors.report (tests assert it stays empty)
