"""torch: the full-precision UNet or the quantization simulation, behind the Runner interface."""
