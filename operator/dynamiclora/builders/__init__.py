"""dynamiclora.builders."""
