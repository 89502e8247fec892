"""The weights: checkpoint layouts and loading, the registry, the catalog of models, fetching."""
