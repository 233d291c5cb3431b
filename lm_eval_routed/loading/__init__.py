"""From a config to a loaded pair: models, their placement, the demo pair, measured costs, the runtime."""
