"""Training: layered configuration, vectorised samplers, the three-phase loop, checkpoints."""
