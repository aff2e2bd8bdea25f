"""Dataset sources, each converting once to the canonical store (:mod:`medtune.data.store`)."""
