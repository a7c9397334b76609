"""dynamiclora.serving."""
