// VAE Precision: hover hints for its settings and its txt2img/img2img accordion.
// The web UI gives settings the id "setting_<key>" and script controls "script_<tab>_vae_precision_<name>".
(function() {
    var hints = {
        enabled: "Off: the web UI's own VAE code runs untouched, with its own dtype.",
        dtype: "Precision of the VAE. host default: what the web UI would use. mixed: each block of the VAE in fp16 where its measured values fit fp16, else in bf16 (the first call measures, in bf16). auto: mixed on GPUs that run fp16 and bf16 natively, else bf16 where native, else fp16 if this VAE is safe in it, else fp32.",
        avoid_emulated: "A forced bf16 or fp16 that this device has no native instructions for runs orders of magnitude slower: run fp32 instead (the image's parameters say so). Off: force it anyway.",
        nan_fallback: "Images that come out with NaN/Inf (black images) are decoded again at a safer dtype: fp16, then bf16, then fp32. Only those images.",
        tiling: "off: never tile. auto: tile when the image would not fit free memory, or after running out of memory. always: always tile. Tiles are seamless; large maps wait in host memory when the GPU is short, and an out-of-memory call goes on with less memory, then on the CPU.",
        tile_size: "Tile size in pixels, 64 to 8192; 0 or auto: sized from free memory.",
        offload: "Where the VAE weights stay between and during decodes: keep on GPU, offload to CPU after use, sequential (layer by layer), or decode on CPU.",
        free_memory: "Empty the GPU memory cache after each VAE call: slower, leaves more memory to other programs.",
        write_stats: "Write VAE timings and memory into the image's parameters. The dtype, tiling and offload used are written either way.",
        compile: "torch.compile the VAE's encoder and decoder (CUDA only): about 2x faster decodes after a first call that compiles for tens of seconds per image size.",
        channels_last: "Store the VAE's convolution weights and inputs channels_last. Measured slower in eager bf16 on an H100; try it on your GPU.",
        fused_upsample: "Run each decoder upsample + convolution as one transposed convolution: less memory, faster, pixels differ by rounding. Only where the VAE runs in bf16/fp16 on CUDA by this extension's choice; not when compiling.",
        fast_groupnorm: "Compute the VAE's bf16/fp16 GroupNorms from per-channel sums and one normalising pass instead of torch's own CUDA kernel, which is slow on large images: about twice as fast at 1024 px and up, with less memory, pixels differ by rounding. Only where the VAE runs in bf16/fp16 on CUDA by this extension's choice; not when compiling.",
        cudnn_benchmark: "Let cuDNN time its convolution algorithms for each image size during VAE calls only. Helps fp32 VAEs; the first call at a new size is slower.",
        low_memory: "Run large bf16/fp16 convolutions in bands of rows, so cuDNN's workspace stays small: about half the fp32 peak memory, about 15% slower. Measured with fast GroupNorm off; with it on the peak is already about half.",
        accordion: "Open to choose VAE Precision settings for this render only; 'use settings' keeps the value from Settings."
    };

    function setTitle(id, text) {
        var el = gradioApp().getElementById(id);
        if (el && !el.title) {
            el.title = text;
        }
    }

    onUiLoaded(function() {
        Object.keys(hints).forEach(function(name) {
            setTitle("setting_vae_precision_" + name, hints[name]);
            ["txt2img", "img2img"].forEach(function(tab) {
                setTitle("script_" + tab + "_vae_precision_" + name, hints[name]);
            });
        });
    });
})();
