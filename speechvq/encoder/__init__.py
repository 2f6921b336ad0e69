"""Learned features and quantizers: a conv encoder on the waveform, a quantizer, a log-mel decoder (a VQ-VAE)."""
