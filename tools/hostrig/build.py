"""Build a host rig on the CPU machine.

    python tools/hostrig/build.py HOST tree      # .rig/HOST/webui: the host's source, its repositories/,
                                                 # the CLIP tokenizer/config cache, the rig's extensions
    python tools/hostrig/build.py HOST cpu-site  # .rig/HOST/site-cpu: packages for this machine's Python
    python tools/hostrig/build.py HOST bundle    # .rig/bundle/HOST: webui.tar.xz + site312.tar.xz for the
                                                 # GPU machine (Python 3.12), stripped of web assets

HOST is reforge, forge or a1111. The host's source comes from the git mirror that the `fetch` tool filled;
files over MAX_FILE bytes and blobs the mirror lacks are left out. Nothing built here is committed:
.rig/ is git-ignored.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hosts import GPU_LIKE, HOSTS, MIRROR, REPOS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
RIG = os.path.join(ROOT, ".rig")
MAX_FILE = 4 * 1024 * 1024
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64"]
OPENAI_CLIP = ("openai+CLIP", "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1")
PIP = [sys.executable, "-m", "pip"]
# The CLIP ViT-L/14 text model's tokenizer and config, as reForge ships them; A1111 and sgm load
# "openai/clip-vit-large-patch14" through transformers, which reads them from this cache offline.
CLIP_L_SOURCE = ("Panchovix+stable-diffusion-webui-reForge", "3b56b268ad9158ee8b30900973b6ccda4ec22241",
                 "ldm_patched/modules/sd1_tokenizer", "ldm_patched/modules/sd1_clip_config.json")


def git(mirror, *args, **kw):
    return subprocess.run(["git", "--git-dir", MIRROR.format(mirror), *args], check=True,
                          capture_output=True, **kw).stdout


def export(mirror, commit, dest, folders=None, max_file=MAX_FILE):
    """Write the tree of `commit` into dest: regular files up to max_file bytes that the mirror holds.
    Returns the paths left out and why."""
    listing = git(mirror, "ls-tree", "-r", "-l", "-z", commit).split(b"\0")
    wanted, skipped = [], []
    for entry in filter(None, listing):
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha, size = meta.split()
        path = path.decode()
        if folders and not any(path == f or path.startswith(f + "/") for f in folders):
            continue
        if kind != b"blob":
            skipped.append((path, "submodule"))
        elif not size.isdigit():
            skipped.append((path, "not in the mirror"))
        elif int(size) > max_file:
            skipped.append((path, f"{int(size)} bytes"))
        else:
            wanted.append((path, sha.decode(), mode.decode()))
    batch = subprocess.Popen(["git", "--git-dir", MIRROR.format(mirror), "cat-file", "--batch"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for path, sha, mode in wanted:
        batch.stdin.write(sha.encode() + b"\n")
        batch.stdin.flush()
        header = batch.stdout.readline().split()
        if header[-1] == b"missing":
            skipped.append((path, "not in the mirror"))
            continue
        data = batch.stdout.read(int(header[2]))
        batch.stdout.read(1)
        target = os.path.join(dest, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if mode == "120000":
            if os.path.lexists(target):
                os.remove(target)
            os.symlink(data.decode(), target)
            continue
        with open(target, "wb") as f:
            f.write(data)
        if mode == "100755":
            os.chmod(target, 0o755)
    batch.stdin.close()
    batch.wait()
    return skipped


def write_clip_cache(hf_home):
    """An offline Hugging Face cache entry for openai/clip-vit-large-patch14 (tokenizer + text config)."""
    mirror, commit, tokenizer_dir, config = CLIP_L_SOURCE
    revision = "0" * 40
    repo = os.path.join(hf_home, "hub", "models--openai--clip-vit-large-patch14")
    snapshot = os.path.join(repo, "snapshots", revision)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    tmp = os.path.join(hf_home, ".clip-src")
    export(mirror, commit, tmp, folders=[tokenizer_dir, config])
    os.makedirs(snapshot, exist_ok=True)
    for name in os.listdir(os.path.join(tmp, tokenizer_dir)):
        shutil.copy(os.path.join(tmp, tokenizer_dir, name), os.path.join(snapshot, name))
    shutil.copy(os.path.join(tmp, config), os.path.join(snapshot, "config.json"))
    shutil.rmtree(tmp)


def _ldm_for_lightning_2(folder):
    """The GPU machine has pytorch-lightning 2, where `utilities.distributed.rank_zero_only` moved to
    `utilities.rank_zero`. reForge pins a fork of stablediffusion for this (no mirror here) and imports
    ldm before its own `fix_pytorch_lightning()`; the same one-line change is made to the copy here."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                text = open(path).read()
                if "pytorch_lightning.utilities.distributed import" in text:
                    open(path, "w").write(text.replace("pytorch_lightning.utilities.distributed import",
                                                       "pytorch_lightning.utilities.rank_zero import"))


def build_tree(host):
    spec = HOSTS[host]
    webui = os.path.join(RIG, host, "webui")
    if os.path.isdir(webui):
        shutil.rmtree(webui)
    os.makedirs(webui)
    skipped = export(spec["mirror"], spec["commit"], webui)
    for name in spec["repos"]:
        mirror, commit, folders = REPOS[name]
        skipped += [(f"repositories/{name}/{p}", why)
                    for p, why in export(mirror, commit, os.path.join(webui, "repositories", name), folders)]
    _ldm_for_lightning_2(os.path.join(webui, "repositories", "stable-diffusion-stability-ai"))
    write_clip_cache(os.path.join(webui, "rig-hf"))
    # A1111's SD1 config, which the checkpoint maker reads for every host (Forge ships no yaml configs).
    export(HOSTS["a1111"]["mirror"], HOSTS["a1111"]["commit"], os.path.join(webui, ".rig-src"),
           folders=["configs/v1-inference.yaml"])
    os.makedirs(os.path.join(webui, "rig-configs"), exist_ok=True)
    shutil.move(os.path.join(webui, ".rig-src", "configs", "v1-inference.yaml"),
                os.path.join(webui, "rig-configs", "v1-inference.yaml"))
    shutil.rmtree(os.path.join(webui, ".rig-src"))
    shutil.copytree(os.path.join(HERE, "rig_extension"), os.path.join(webui, "extensions", "rig-probe"))
    with open(os.path.join(RIG, host, "left-out.txt"), "w") as f:
        f.writelines(f"{p}\t{why}\n" for p, why in skipped)
    print(f"{webui}: {len(skipped)} files left out (.rig/{host}/left-out.txt)")


def _norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheels_of(requirement, folder):
    name, _, version = requirement.partition("==")
    return [f for f in sorted(os.listdir(folder)) if f.endswith(".whl")
            and _norm(f.split("-")[0]) == _norm(name) and (not version or f.split("-")[1] == version)]


def _download(packages, dest, cross):
    os.makedirs(dest, exist_ok=True)
    for requirement in packages:
        if _wheels_of(requirement, dest):
            continue
        args = PIP + ["download", "-q", "--no-deps", "-d", dest, requirement]
        if cross:
            args += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
            args += [a for p in PLATFORMS for a in ("--platform", p)]
        if subprocess.run(args).returncode != 0 or not _wheels_of(requirement, dest):
            # An sdist-only package (antlr4-python3-runtime): build its pure-Python wheel here.
            subprocess.run(PIP + ["wheel", "-q", "--no-deps", "-w", dest, requirement], check=True)
    for f in os.listdir(dest):
        if not f.endswith(".whl"):
            os.remove(os.path.join(dest, f))


def _strip_site(site):
    """Drop what only the browser UI or a developer needs, to fit the 64 MiB a command may carry."""
    for root, dirs, files in os.walk(site):
        for d in list(dirs):
            if d == "__pycache__" or (d in ("node", "_frontend_code") and os.path.basename(root) == "gradio"):
                shutil.rmtree(os.path.join(root, d))
                dirs.remove(d)
        if "/gradio/templates" in root.replace(os.sep, "/"):
            for f in files:
                if not f.endswith(".html"):
                    os.remove(os.path.join(root, f))


def _torchvision_without_ops(site):
    """The CPU machine's torch is a +cpu build and PyPI's torchvision is built against CUDA torch, so its
    compiled ops do not load here; its unguarded fake-kernel registrations then stop the import. Guard
    them, as torchvision guards its other registrations (CPU rig only: nms and friends are not used)."""
    path = os.path.join(site, "torchvision", "_meta_registrations.py")
    if os.path.exists(path):
        text = open(path).read()
        text = re.sub(r'@torch\.library\.register_fake\(("torchvision::\w+")\)',
                      r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))',
                      text)
        open(path, "w").write(text)


def build_site(host, cross):
    spec = HOSTS[host]
    wheels = os.path.join(RIG, "wheels312" if cross else "wheels-cpu")
    site = os.path.join(RIG, host, "site312" if cross else "site-cpu")
    pinned = {_norm(r.partition("==")[0]) for r in spec["packages"]}
    packages = spec["packages"] + ([] if cross else [r for r in GPU_LIKE if _norm(r.partition("==")[0]) not in pinned])
    _download(packages, wheels, cross)
    files = [os.path.join(wheels, _wheels_of(requirement, wheels)[-1]) for requirement in packages]
    if os.path.isdir(site):
        shutil.rmtree(site)
    args = PIP + ["install", "-q", "--no-deps", "--no-compile", "--target", site]
    if cross:
        args += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
        args += [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(args + files, check=True)
    # openai's CLIP, which the launchers install from a GitHub archive (launch_utils.py clip_package)
    export(*OPENAI_CLIP, site, folders=["clip"])
    _strip_site(site)
    if not cross:
        _torchvision_without_ops(site)
    print(site)
    return site


# What a run leaves in the web UI's folder: models, settings, outputs, the installed extension.
RUN_LEFTOVERS = ("webui/models/Stable-diffusion/", "webui/models/VAE/", "webui/models/VAE-approx/", "webui/outputs/", "webui/log/", "webui/extensions/sd-webui-vae-precision",
                 "webui/config.json", "webui/ui-config.json", "webui/cache.json", "webui/params.txt",
                 "webui/config_states/")


def _source_only(info):
    name = info.name
    if "__pycache__" in name or any(name.startswith(p) or name == p.rstrip("/") for p in RUN_LEFTOVERS):
        return None
    return info


def build_bundle(host):
    webui = os.path.join(RIG, host, "webui")
    if not os.path.isdir(webui):
        build_tree(host)
    site = build_site(host, cross=True)
    out = os.path.join(RIG, "bundle", host)
    os.makedirs(out, exist_ok=True)
    for name, folder in (("webui", webui), ("site312", site)):
        path = os.path.join(out, name + ".tar.xz")
        with tarfile.open(path, "w:xz", preset=6) as tar:
            tar.add(folder, arcname=name, filter=_source_only)
        print(path, os.path.getsize(path) // 1024, "KiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host", choices=sorted(HOSTS))
    parser.add_argument("what", choices=["tree", "cpu-site", "bundle"])
    args = parser.parse_args()
    if args.what == "tree":
        build_tree(args.host)
    elif args.what == "cpu-site":
        build_site(args.host, cross=False)
    else:
        build_bundle(args.host)


if __name__ == "__main__":
    main()
