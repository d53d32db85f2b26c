"""Start a web UI with VAE Precision and the rig probe in extensions/, render over its HTTP API, and write
what was seen as JSON.

    python tools/hostrig/check.py --host reforge --webui .rig/reforge/webui --out OUT [--plan cpu|gpu]
        [--python PY] [--site DIR] [--extension DIR] [--budget SECONDS] [--phases default,hostfp32]

Each phase starts the host once with its flags (`hosts.py`), waits for the API and runs its renders,
each as one HTTP request; the results are written after every render to OUT/results.json (infotext
fields, times, pixel digests) and the host's console to OUT/host-PHASE.log. The HTTP client is the
standard library; the image comparisons (PSNR, equality) use numpy and Pillow, which every host has.
"""
import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from hosts import HOSTS  # noqa: E402

SIZES = {"cpu": dict(base=64, steps=2, big=128), "gpu": dict(base=1024, steps=4, big=4096)}
FIELD = re.compile(r'\s*([\w\-/][\w \-/()]*?): ("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')


class Host:
    def __init__(self, args, phase, flags, env):
        self.args, self.phase = args, phase
        self.url = f"http://127.0.0.1:{args.port}"
        self.log_path = os.path.join(args.out, f"host-{phase}.log")
        command = [args.python, "launch.py", *HOSTS[args.host]["flags"], *flags, "--port", str(args.port)]
        environment = dict(os.environ, PYTHONUNBUFFERED="1", HF_HOME=os.path.join(args.webui, "rig-hf"),
                           HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
        if args.site:
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [args.site, os.environ.get("PYTHONPATH")]))
        self.command = command
        self.log = open(self.log_path, "w")
        self.log.write(" ".join(command) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen(command, cwd=args.webui, env=environment, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout):
        start = time.time()
        while time.time() - start < timeout:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
            try:
                self.get("/sdapi/v1/sd-models", timeout=5)
                return None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        return f"no API after {timeout} s"

    def request(self, method, path, body=None, timeout=600):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def get(self, path, timeout=60):
        return self.request("GET", path, timeout=timeout)

    def post(self, path, body, timeout=600):
        return self.request("POST", path, body, timeout)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def log_tail(self, lines=40):
        with open(self.log_path, errors="replace") as f:
            return f.read().splitlines()[-lines:]


def parse_infotext(text):
    last = text.strip().splitlines()[-1] if text else ""
    return {m.group(1).strip(): m.group(2).strip().strip('"') for m in FIELD.finditer(last) if m.group(1)}


def decode_image(b64):
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def psnr(a, b):
    import numpy as np
    if a is None or b is None or a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


class Run:
    def __init__(self, args):
        self.args = args
        self.size = SIZES[args.plan]
        self.results = dict(host=args.host, plan=args.plan, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                            phases=[], renders={}, checks=[])
        self.images = {}
        self.start = time.time()
        self.host = None
        self.phase_end = args.budget

    def left(self):
        return min(self.args.budget, self.phase_end) - (time.time() - self.start)

    def save(self):
        with open(os.path.join(self.args.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)

    def render(self, name, payload, route="txt2img", keep=True):
        """One render; the outcome (or the error) is recorded under `name`."""
        if self.left() < 0:
            self.results["renders"][name] = dict(skipped="time budget spent")
            return None
        start = time.time()
        entry = dict(phase=self.phase)
        try:
            response = self.host.post(f"/sdapi/v1/{route}", payload)
            info = json.loads(response.get("info") or "{}")
            texts = info.get("infotexts") or []
            entry["fields"] = {k: v for k, v in parse_infotext(texts[0] if texts else "").items()
                               if k.startswith(("VAE", "Rig", "Model", "Size", "Hires", "Denoising"))}
            image = decode_image(response["images"][0])
            entry["shape"] = list(image.shape)
            entry["sha256"] = hashlib.sha256(image.tobytes()).hexdigest()[:16]
            entry["mean"] = round(float(image.mean()), 2)
            entry["black"] = bool(image.max() == 0)
            if keep:
                self.images[name] = image
        except urllib.error.HTTPError as error:
            entry["error"] = f"HTTP {error.code}: {error.read()[:400].decode(errors='replace')}"
        except Exception as error:  # noqa: BLE001 - recorded, the next render goes on
            entry["error"] = f"{type(error).__name__}: {error}"
        entry["seconds"] = round(time.time() - start, 2)
        self.results["renders"][name] = entry
        self.save()
        print(f"[{time.time() - self.start:6.1f}s] {name}: {entry.get('error') or entry.get('fields')}", flush=True)
        return entry

    def compare(self, label, a, b, expect=None):
        value = psnr(self.images.get(a), self.images.get(b))
        check = dict(check=label, a=a, b=b, psnr=value)
        if expect == "equal":
            check["ok"] = value == 99.0
        self.results["checks"].append(check)
        self.save()
        return value

    def note(self, label, **kw):
        self.results["checks"].append(dict(check=label, **kw))
        self.save()

    # -- phases ---------------------------------------------------------------------------------------
    def start_host(self, phase, flags=(), env=None):
        self.phase = phase
        if self.host:
            self.host.stop()
        started = time.time()
        self.host = Host(self.args, phase, list(flags), env or {})
        problem = self.host.wait_ready(min(self.args.start_timeout, max(self.left(), 30)))
        record = dict(phase=phase, command=" ".join(self.host.command), start_seconds=round(time.time() - started, 1))
        if problem:
            record["failed"] = problem
            record["log_tail"] = self.host.log_tail()
        self.results["phases"].append(record)
        self.save()
        print(f"phase {phase}: {problem or 'up'} in {record['start_seconds']} s", flush=True)
        return problem is None

    def device_flags(self):
        return HOSTS[self.args.host]["cpu_flags" if self.args.plan == "cpu" else "gpu_flags"]

    def payload(self, size=None, **kw):
        size = size or self.size["base"]
        body = dict(prompt="a lighthouse at dusk", negative_prompt="", seed=1, steps=self.size["steps"],
                    width=size, height=size, sampler_name="Euler", cfg_scale=5, batch_size=1,
                    override_settings_restore_afterwards=True)
        body.update(kw)
        if self.args.host == "forge" and body.get("enable_hr"):
            # Forge's processing.py sample() tests `'Use same choices' not in self.hr_additional_modules`,
            # which the API leaves None
            body.setdefault("hr_additional_modules", ["Use same choices"])
        return body

    def set_model(self, name, vae="None"):
        started = time.time()
        try:
            if self.args.host == "forge":
                # Forge picks VAEs as additional modules (modules_forge/main_entry.py), not through sd_vae
                modules = [] if vae == "None" else [os.path.join(self.args.webui, "models", "VAE", vae)]
                self.host.post("/sdapi/v1/options", {"sd_model_checkpoint": name, "forge_additional_modules": modules})
            else:
                self.host.post("/sdapi/v1/options", {"sd_model_checkpoint": name, "sd_vae": vae})
            self.note(f"switch to {name} / VAE {vae}", seconds=round(time.time() - started, 1), ok=True)
        except Exception as error:  # noqa: BLE001
            self.note(f"switch to {name} / VAE {vae}", ok=False, error=f"{type(error).__name__}: {error}")

    def options_check(self):
        try:
            # live previews download an approximation model; nothing can be downloaded on the GPU machine
            self.host.post("/sdapi/v1/options", {"live_previews_enable": False})
            options = self.host.get("/sdapi/v1/options")
            keys = sorted(k for k in options if k.startswith("vae_precision_"))
            state = self.host.get("/rig/state")
            self.note("options over the API", keys=len(keys), dtype=options.get("vae_precision_dtype"),
                      rig=state)
        except Exception as error:  # noqa: BLE001
            self.note("options over the API", error=f"{type(error).__name__}: {error}")

    @staticmethod
    def mode(dtype=None, enabled=True, **extra):
        settings = {"vae_precision_enabled": enabled}
        if dtype:
            settings["vae_precision_dtype"] = dtype
        settings.update({f"vae_precision_{k}": v for k, v in extra.items()})
        return settings

    def dtype_renders(self, tag, size=None, hires=False, forced=True):
        """The extension's default, off, and each forced dtype on the loaded model, same seed."""
        extra = {}
        if hires:
            extra = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=self.size["steps"],
                         denoising_strength=0.5)
        runs = [("default", None, True), ("off", None, False), ("fp32", "fp32", True),
                ("hostdefault", "host default", True)]
        if forced and not hires:
            runs += [("bf16", "bf16", True), ("fp16", "fp16", True), ("mixed", "mixed", True)]
        for label, dtype, enabled in runs:
            # default and off are timed against each other: the second of two renders is kept, the first
            # pays cuDNN's and the allocator's warm-up
            warm = self.args.plan == "gpu" and label in ("default", "off")
            for attempt in (("warm", False), ("", True)) if warm else (("", True),):
                suffix, keep = attempt
                self.render(f"{tag}/{label}{'/' + suffix if suffix else ''}",
                            self.payload(size, override_settings=self.mode(dtype, enabled), **extra), keep=keep)
        self.compare(f"{tag}: off vs fp32 (bit for bit where the host runs fp32)", f"{tag}/off", f"{tag}/fp32")
        self.compare(f"{tag}: host default vs off", f"{tag}/hostdefault", f"{tag}/off", expect="equal")
        for label, _dtype, _enabled in runs:
            if label != "fp32":
                self.compare(f"{tag}: {label} vs fp32", f"{tag}/{label}", f"{tag}/fp32")

    def phase_default(self):
        if not self.start_host("default", self.device_flags()):
            return
        self.options_check()
        base, steps = self.size["base"], self.size["steps"]
        models = ["rig-sd15.safetensors"] + (["rig-sdxl.safetensors"] if self.args.plan == "gpu" else [])
        for model in models:
            tag = model.split(".")[0].replace("rig-", "")
            self.set_model(model)
            self.dtype_renders(f"{tag}/{base}", forced=tag == "sdxl" or self.args.plan == "cpu")
            self.dtype_renders(f"{tag}/hires{2 * base}", hires=True)
        xl = models[-1]
        # never black: the fp16-overflowing VAE
        self.set_model(xl, "rig-sdxl-fp16-overflow.safetensors")
        for label, dtype, enabled in [("fp32", "fp32", True), ("fp16", "fp16", True), ("mixed-1", "mixed", True),
                                      ("mixed-2", "mixed", True), ("default", None, True), ("off", None, False)]:
            self.render(f"overflow/{label}", self.payload(override_settings=self.mode(dtype, enabled)))
        for label in ("fp16", "mixed-1", "mixed-2", "default", "off"):
            self.compare(f"overflow: {label} vs fp32", f"overflow/{label}", "overflow/fp32")
        # VAE switch back, then the checkpoint's own VAE again with bf16
        self.set_model(xl, "None")
        self.render("switch/after-vae-switch-bf16", self.payload(override_settings=self.mode("bf16")))
        # cancel during a decode, then a render with fp32: no error, right dtype
        self.interrupt_during_decode()
        self.render("switch/after-interrupt-fp32", self.payload(override_settings=self.mode("fp32")))
        # two renders queued back to back
        self.queued()
        # the accordion's arguments (alwayson_scripts) for one render: fp32, tiled in 512 px tiles
        self.render("accordion/fp32-tiled512", self.payload(alwayson_scripts={"VAE Precision": {
            "args": [True, "use settings", "fp32", "use settings", "always", "512"]}}))
        self.compare("accordion fp32 tiled 512 vs settings fp32 untiled", "accordion/fp32-tiled512",
                     f"{models[-1].split('.')[0].replace('rig-', '')}/{base}/fp32")
        # memory: only N GB free at the decode, beside what the web UI keeps resident
        if self.args.plan == "gpu":
            for free_gb in (4, 2):
                self.host.post("/rig/config", {"free_gb": free_gb, "at": "decode"})
                hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=steps,
                             denoising_strength=0.5)
                for label, enabled in (("default", True), ("off", False)):
                    self.render(f"mem{free_gb}/hires{2 * base}/{label}",
                                self.payload(override_settings=self.mode(None, enabled), **hires))
                self.compare(f"mem{free_gb}: default vs unconstrained default", f"mem{free_gb}/hires{2 * base}/default",
                             f"{tag}/hires{2 * base}/default")
            self.host.post("/rig/config", {"free_gb": 2, "at": "decode"})
            self.set_model(models[0])
            big = self.size["big"]
            for label, enabled in (("default", True), ("off", False)):
                self.render(f"mem2/img2img{big}/{label}", self.img2img(big, self.mode(None, enabled)), route="img2img",
                            keep=False)
            self.host.post("/rig/config", {"free_gb": None})

    def img2img(self, size, settings):
        return dict(self.payload(size, override_settings=settings), init_images=[tiny_png()],
                    denoising_strength=0.3, steps=2)

    def interrupt_during_decode(self):
        base = self.size["base"]
        payload = self.payload(override_settings=self.mode(None), enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                               hr_second_pass_steps=self.size["steps"], denoising_strength=0.5)
        done = {}
        thread = threading.Thread(target=lambda: done.update(entry=self.render("switch/interrupted", payload)))
        decodes = self.host.get("/rig/state")["decodes"]
        thread.start()
        seen, start = False, time.time()
        while thread.is_alive() and time.time() - start < 120:
            state = self.host.get("/rig/state")
            if state["decoding"]:
                self.host.post("/sdapi/v1/interrupt", {})
                seen = True
                break
            time.sleep(0.005)
        thread.join()
        self.note("interrupt during a decode", hit_decode=seen, decodes_before=decodes,
                  render=done.get("entry", {}).get("error") or "image returned", size=2 * base)

    def queued(self):
        entries = {}

        def one(label, dtype):
            entries[label] = self.render(f"queue/{label}", self.payload(override_settings=self.mode(dtype)))
        threads = [threading.Thread(target=one, args=(label, dtype)) for label, dtype in (("fp32", "fp32"),
                                                                                          ("bf16", "bf16"))]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
        self.note("two renders queued", dtypes={k: (v or {}).get("fields", {}).get("VAE dtype") for k, v in entries.items()},
                  errors={k: (v or {}).get("error") for k, v in entries.items()})

    def phase_host_fp32(self):
        flag = HOSTS[self.args.host]["hf_flags"][0]
        flags = self.device_flags() + [flag]
        if not self.start_host("hostfp32", flags):
            return
        self.options_check()
        base = self.size["base"]
        models = ["rig-sd15.safetensors"] + (["rig-sdxl.safetensors"] if self.args.plan == "gpu" else [])
        for model in models:
            tag = model.split(".")[0].replace("rig-", "")
            self.set_model(model)
            for label, hires in ((f"{base}", False), (f"hires{2 * base}", True)):
                extra = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=self.size["steps"],
                             denoising_strength=0.5) if hires else {}
                for suffix, keep in (("warm", False), ("", True)) if self.args.plan == "gpu" else (("", True),):
                    self.render(f"hostfp32/{tag}/{label}/off{'/' + suffix if suffix else ''}",
                                self.payload(override_settings=self.mode(None, False), **extra), keep=keep)
                self.compare(f"{tag}/{label}: extension fp32 (host bf16/fp16 load) vs {flag} off",
                             f"{tag}/{label}/fp32", f"hostfp32/{tag}/{label}/off", expect="equal")
                self.compare(f"{tag}/{label}: extension default vs {flag} off",
                             f"{tag}/{label}/default", f"hostfp32/{tag}/{label}/off")
                self.compare(f"{tag}/{label}: host default (off) vs {flag} off",
                             f"{tag}/{label}/off", f"hostfp32/{tag}/{label}/off")

    def run(self):
        phases = {"default": self.phase_default, "hostfp32": self.phase_host_fp32}
        try:
            names = self.args.phases.split(",")
            for index, name in enumerate(names):
                # the last phase keeps `--reserve` seconds of the budget for itself
                self.phase_end = self.args.budget - (self.args.reserve if index < len(names) - 1 else 0)
                if self.left() < 30:
                    self.results["phases"].append(dict(phase=name, skipped="time budget spent"))
                    continue
                try:
                    phases[name]()
                except Exception as error:  # noqa: BLE001 - the next phase still runs
                    self.results["phases"].append(dict(phase=name, error=f"{type(error).__name__}: {error}"))
        finally:
            if self.host:
                self.host.stop()
            self.results["seconds"] = round(time.time() - self.start, 1)
            self.save()


def tiny_png(size=64):
    """A small RGB gradient PNG, base64 (standard library only)."""
    import struct
    import zlib
    rows = b"".join(b"\0" + bytes((x * 4 % 256, y * 4 % 256, 128)[c] for x in range(size) for c in range(3))
                    for y in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def install_extensions(webui, extension):
    target = os.path.join(webui, "extensions", "sd-webui-vae-precision")
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(extension, target, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".rig", ".wheels", ".whl", "tests", "tools", "bench-out", "__pycache__", ".devwork"))
    probe = os.path.join(webui, "extensions", "rig-probe")
    if os.path.exists(probe):
        shutil.rmtree(probe)
    shutil.copytree(os.path.join(HERE, "rig_extension"), probe)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", choices=sorted(HOSTS), required=True)
    parser.add_argument("--webui", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plan", choices=sorted(SIZES), default="gpu")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--site", default=None, help="folder of the host's packages, put first on PYTHONPATH")
    parser.add_argument("--extension", default=ROOT, help="VAE Precision's folder, copied into extensions/")
    parser.add_argument("--phases", default="default,hostfp32")
    parser.add_argument("--budget", type=float, default=500, help="seconds; no new render starts after this")
    parser.add_argument("--reserve", type=float, default=100, help="seconds of the budget kept for the last phase")
    parser.add_argument("--start-timeout", type=float, default=240)
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    args.webui = os.path.abspath(args.webui)
    args.site = args.site and os.path.abspath(args.site)
    os.makedirs(args.out, exist_ok=True)
    install_extensions(args.webui, args.extension)
    Run(args).run()


if __name__ == "__main__":
    main()
