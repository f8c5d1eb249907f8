"""Dataset adapters; each module registers itself in :data:`bench.data.DATASETS`."""
