"""Built-in anomaly localizers; each submodule registers itself in :data:`bench.method.METHODS`."""
