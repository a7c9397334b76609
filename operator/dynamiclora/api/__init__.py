"""dynamiclora.api."""
