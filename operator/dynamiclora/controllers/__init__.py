"""dynamiclora.controllers."""
