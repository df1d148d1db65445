"""Sales forecast with a CNN over Data Frames (Zhao & Wang): frames, model, training,
loaders, baselines, the experiment's config and protocol."""
