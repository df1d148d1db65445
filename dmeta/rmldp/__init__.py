"""RMLDP: relation-aware meta-learning for segment demand prediction (MPFN + modulated MAML)."""
