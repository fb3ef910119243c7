"""Model passes: each module has a typed Config and a pure `run(model, config, ctx)`."""
