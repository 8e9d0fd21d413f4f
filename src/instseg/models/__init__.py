"""Models: the contracts, what plugins register, their discovery, the registry, building models, weights."""
