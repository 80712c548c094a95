"""Training: the losses, the peers, cached gradients, data-parallel helpers, the method table and
the trainer."""
