"""The presets shipped with gradbridge, as TOML files (installed as ``bridge.mappings``)."""
