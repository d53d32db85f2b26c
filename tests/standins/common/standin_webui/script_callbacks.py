"""Stand-in for modules/script_callbacks.py (A1111 v1.10; same API in Forge and reForge)."""
import standin_webui

_callbacks = {"model_loaded": [], "ui_settings": [], "script_unloaded": []}


def _add(category, callback, name):
    _callbacks[category].append((name, callback))


def on_model_loaded(callback, *, name=None):      # real: on_model_loaded(callback, *, name=None)
    _add("model_loaded", callback, name)


def on_ui_settings(callback, *, name=None):       # real: on_ui_settings(callback, *, name=None)
    _add("ui_settings", callback, name)


def on_script_unloaded(callback, *, name=None):   # real: on_script_unloaded(callback, *, name=None)
    _add("script_unloaded", callback, name)


def _run(category, args, reverse=False):
    for name, callback in (reversed(_callbacks[category]) if reverse else list(_callbacks[category])):
        try:   # real dispatchers catch and report_exception
            callback(*args)
        except Exception as error:  # noqa: BLE001
            standin_webui.errors_reported.append(f"{category} {name}: {error!r}")


def model_loaded_callback(sd_model):   # real: model_loaded_callback(sd_model)
    _run("model_loaded", (sd_model,))


def ui_settings_callback():            # real: ui_settings_callback()
    _run("ui_settings", ())


def script_unloaded_callback():        # real: script_unloaded_callback(), reverse order
    _run("script_unloaded", (), reverse=True)
    clear_callbacks()


def clear_callbacks():                 # real: clear_callbacks()
    for callbacks in _callbacks.values():
        callbacks.clear()


def registered(category):
    return [name for name, _ in _callbacks[category]]
