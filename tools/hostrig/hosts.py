"""The web UIs the rig runs, where their sources come from, and the packages each needs beyond what the
GPU machine already has (Python 3.12, torch 2.11, numpy 2, transformers 5, huggingface-hub 1, ...).

Pins follow each host's own `requirements_versions.txt` where the installed version would break the host
(gradio, fastapi/starlette/pydantic, transformers 4 with the tokenizers and huggingface-hub it accepts);
everything else uses what is installed. Sources are git mirrors (`/work/.mirror/OWNER+NAME/repo`,
filled by the `fetch` tool) read with `git archive`.
"""

MIRROR = "/work/.mirror/{}/repo"

# The repositories each host's launcher clones into repositories/ (modules/launch_utils.py
# prepare_environment), at the commits it pins. reForge pins a fork of Stability-AI/stablediffusion
# (joypaul162, f16630a) that has no mirror here; the original at A1111's pin stands in for it (only
# ldm/ is used). Only the listed folders are taken.
REPOS = {
    "stable-diffusion-stability-ai": ("Stability-AI+stablediffusion",
                                      "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf", ["ldm", "configs"]),
    "generative-models": ("Stability-AI+generative-models",
                          "45c443b316737a4ab6e40413d7794a7f5657c19f", ["sgm", "configs"]),
    "k-diffusion": ("crowsonkb+k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c", ["k_diffusion"]),
    "BLIP": ("salesforce+BLIP", "48211a1594f1321b00f14c9f7a5b4813144b2fb9", ["models", "configs"]),
    "huggingface_guess": ("lllyasviel+huggingface_guess", "84826248b49bb7ca754c73293299c4d4e23a548d",
                          ["huggingface_guess"]),
}

# Packages for gradio 3.41 hosts (reForge, A1111), pydantic 1.
GRADIO3 = [
    "gradio==3.41.2", "gradio_client==0.5.0", "fastapi==0.94.0", "starlette==0.26.1", "pydantic==1.10.15",
    "websockets==11.0.3", "altair==5.4.1", "jsonschema==4.23.0", "jsonschema-specifications==2024.10.1",
    "referencing==0.35.1", "rpds-py==0.22.3", "importlib_resources==6.4.5",
]
# Packages for gradio 4.40 (Forge), pydantic 2.
GRADIO4 = [
    "gradio==4.40.0", "gradio_client==1.2.0", "fastapi==0.104.1", "starlette==0.27.0", "pydantic==2.8.2",
    "pydantic_core==2.20.1", "annotated-types==0.7.0", "websockets==12.0", "tomlkit==0.12.0",
    "importlib_resources==6.4.5", "gradio_rangeslider==0.0.6", "gradio_imageslider==0.0.20", "loadimg==0.1.2",
    "jsonschema==4.23.0", "jsonschema-specifications==2024.10.1", "referencing==0.35.1", "rpds-py==0.22.3",
]
# Both: the web server and the host's own imports at start-up.
SHARED = [
    "uvicorn==0.30.6", "python-multipart==0.0.9", "orjson==3.10.12", "ffmpy==0.4.0", "semantic_version==2.10.0",
    "pydub==0.25.1", "httpx==0.24.1", "httpcore==0.17.3", "h11==0.14.0", "sniffio==1.3.1",
    "omegaconf==2.2.3", "antlr4-python3-runtime==4.9.3", "ftfy==6.3.1", "wcwidth==0.2.13",
    "torchsde==0.2.6", "trampoline==0.1.2", "blendmodes==2024.1.1", "aenum==3.1.15", "deprecation==2.1.0",
    "inflection==0.5.1", "jsonmerge==1.9.2", "piexif==1.1.3", "resize-right==0.0.2", "tomesd==0.1.3",
    "GitPython==3.1.32", "gitdb==4.0.11", "smmap==5.0.1", "pillow-avif-plugin==1.4.6", "diskcache==5.6.3",
    "clean-fid==0.1.35", "setuptools==69.5.1", "pytz==2024.2", "tzdata==2024.2", "importlib_metadata==8.5.0",
]

# reForge and Forge share launch.py's flags, the CPU/GPU device flags and the VAE dtype flags.
FORGE_FAMILY_LAUNCH = dict(
    flags=["--skip-prepare-environment", "--skip-install", "--skip-version-check", "--nowebui", "--api",
           "--no-download-sd-model", "--no-hashing"],
    cpu_flags=["--always-cpu"],
    gpu_flags=["--attention-pytorch"],
    hf_flags=["--vae-in-fp32", "--vae-in-bf16"],
)

HOSTS = {
    "reforge": dict(
        mirror="Panchovix+stable-diffusion-webui-reForge", commit="3b56b268ad9158ee8b30900973b6ccda4ec22241",
        repos=["stable-diffusion-stability-ai", "generative-models", "k-diffusion", "BLIP"],
        packages=GRADIO3 + SHARED + [
            "lark==1.2.2", "open-clip-torch==2.30.0", "kornia==0.8.0", "kornia_rs==0.1.8", "spandrel==0.4.1",
            "spandrel-extra-arches==0.2.0", "transformers==4.48.1", "tokenizers==0.21.0",
            "huggingface-hub==0.26.5", "diffusers==0.32.2", "cachetools==5.5.1", "albumentations==1.4.3",
            "qudida==0.0.4",
        ],
        # launch.py's own flags; the device flags follow (CPU: --always-cpu).
        **FORGE_FAMILY_LAUNCH,
    ),
    "forge": dict(
        mirror="lllyasviel+stable-diffusion-webui-forge", commit="dfdcbab685e57677014f05a3309b48cc87383167",
        repos=["stable-diffusion-stability-ai", "generative-models", "k-diffusion", "BLIP", "huggingface_guess"],
        packages=GRADIO4 + SHARED + [
            "lark==1.1.2", "open-clip-torch==2.20.0", "kornia==0.6.7", "spandrel==0.3.4",
            "spandrel-extra-arches==0.1.1", "transformers==4.46.1", "tokenizers==0.20.3",
            "huggingface-hub==0.26.2", "diffusers==0.31.0", "peft==0.13.2",
        ],
        **FORGE_FAMILY_LAUNCH,
    ),
    "a1111": dict(
        mirror="kklouzal+stable-diffusion-webui", commit="v1.10.1",
        repos=["stable-diffusion-stability-ai", "generative-models", "k-diffusion", "BLIP"],
        # transformers 4.30.2 (its pin) needs tokenizers 0.13, which has no Python 3.12 build.
        packages=GRADIO3 + SHARED + [
            "lark==1.1.2", "open-clip-torch==2.20.0", "kornia==0.6.7", "spandrel==0.3.4",
            "spandrel-extra-arches==0.1.1", "transformers==4.46.1", "tokenizers==0.20.3",
            "huggingface-hub==0.26.2",
        ],
        flags=["--skip-prepare-environment", "--skip-install", "--skip-version-check", "--nowebui", "--api",
               "--no-download-sd-model", "--no-hashing", "--skip-torch-cuda-test"],
        cpu_flags=["--use-cpu", "all", "--no-half", "--precision", "full"],
        gpu_flags=["--opt-sdp-attention"],
        hf_flags=["--no-half-vae"],
    ),
}

# What the CPU machine's test venv lacks that the GPU machine has (approximately its versions), so that
# the CPU rig imports what the GPU rig will import.
GPU_LIKE = [
    "einops", "scipy", "scikit-image", "opencv-python-headless", "pytorch-lightning", "lightning-utilities",
    "torchmetrics", "timm", "accelerate", "torchvision==0.28.0", "torchdiffeq", "regex", "protobuf", "pandas",
    "matplotlib", "jinja2", "aiofiles", "anyio", "typer", "rich", "click", "shellingham", "markdown-it-py",
    "mdurl", "pygments", "tqdm", "requests", "pyyaml", "psutil", "attrs", "narwhals", "toolz", "imageio",
    "tifffile", "lazy-loader", "networkx", "python-dateutil", "six", "joblib",
    "threadpoolctl", "scikit-learn", "sentencepiece", "peft", "cloudpickle", "xxhash", "safetensors", "annotated-doc", "filelock", "packaging", "typing-extensions",
]
