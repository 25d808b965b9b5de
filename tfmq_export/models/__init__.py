"""Model loading and adapters: find the temporal branch, quantizable layers and blocks of a UNet."""
