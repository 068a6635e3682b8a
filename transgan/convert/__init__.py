"""Official checkpoints (TransGAN, stylegan2-ada-pytorch, StyleSwin) into this project's models."""
