"""One module per fixture family: ``FAMILIES`` (names in config.json) and ``run(dir, config, weights, io)``."""
