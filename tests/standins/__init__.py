"""Small stand-ins of the three web UIs' modules (names, signatures and the few behaviours the VAE hook
points need), for testing lib_vaeprec.hosts on the CPU. Each stand-in cites the real file and function."""
