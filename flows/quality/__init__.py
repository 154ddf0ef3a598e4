"""Weight-free metrics of a finished job (flicker, appearance, pose fidelity, source PSNR). No Prefect."""
