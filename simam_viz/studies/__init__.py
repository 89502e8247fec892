"""Studies: synthetic scenes, training, evaluation, localization and distributed runs."""
