# Stand-in for ldm_patched/modules/latent_formats.py (reForge 3b56b268): SD15 scaling.
class SD15:
    scale_factor = 0.18215

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor
