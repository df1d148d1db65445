"""C2M (Xue et al.): behaviour sequences, the autoencoder and its segmentation (Algorithm 1),
the deep-clustering baselines, demand mining, the experiment's config and protocol."""
