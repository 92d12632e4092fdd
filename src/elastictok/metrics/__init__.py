"""Quality metrics on [-1, 1] pixels: per-block MSE/PSNR/SSIM and LPIPS."""
