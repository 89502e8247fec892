"""The engine: one analysis pass per model, CAM methods, SimAM neuron by neuron, trust scores."""
