"""Segment knowledge graphs: co-occurrence in baskets or an edge list (``cooccurrence``) and
DeepWalk node embeddings in JAX (``deepwalk``); RMLDP (section 4.3.2) builds on them."""
