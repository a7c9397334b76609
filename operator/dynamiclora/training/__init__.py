"""dynamiclora.training."""
