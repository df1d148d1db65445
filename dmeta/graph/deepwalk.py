"""DeepWalk (Perozzi et al. 2014) in JAX: weighted truncated random walks + skip-gram.

Walks step to a neighbour with probability proportional to the link weight
(isolated nodes stay in place); the skip-gram model is trained with negative
sampling (noise distribution: node frequency in the walks to the power 3/4),
by Adam over random minibatches of (center, context) pairs in one ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from dmeta.types import Array, Key


def transition_probs(weights: Array) -> Array:
    """Transition probabilities f32[I, I]: row-normalized weights; isolated nodes self-loop."""
    weights = jnp.asarray(weights, jnp.float32)
    isolated = jnp.sum(weights, axis=1) <= 0
    weights = jnp.where(isolated[:, None], jnp.eye(weights.shape[0]), weights)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def sample_cdf(key: Key, cdf: Array, shape: tuple[int, ...] = ()) -> Array:
    """Inverse-CDF sampling, one uniform number and a binary search per draw.

    ``jax.random.categorical`` draws I random numbers per sample; this draws one.
    Zero-probability entries are never drawn.

    Args:
      key: PRNG key.
      cdf: f32[I] cumulative (unnormalized) probabilities, or f32[R, I] one row per draw.
      shape: draws from a 1-D ``cdf`` (ignored for 2-D: one draw per row).

    Returns:
      i32[*shape] for a 1-D ``cdf``, i32[R] for a 2-D one.
    """
    search = functools.partial(jnp.searchsorted, side="right")
    if cdf.ndim == 1:
        idx = search(cdf, jax.random.uniform(key, shape) * cdf[-1])
    else:
        idx = jax.vmap(search)(cdf, jax.random.uniform(key, cdf.shape[:1]) * cdf[:, -1])
    return jnp.minimum(idx, cdf.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("walks_per_node", "walk_length"))
def random_walks(key: Key, weights: Array, *, walks_per_node: int, walk_length: int) -> Array:
    """Truncated random walks from every node.

    Args:
      key: PRNG key.
      weights: f32[I, I] non-negative link weights.
      walks_per_node: walks started at each node.
      walk_length: nodes per walk (including the start).

    Returns:
      i32[I * walks_per_node, walk_length] node indices.
    """
    cdf = jnp.cumsum(transition_probs(weights), axis=1)
    start = jnp.tile(jnp.arange(weights.shape[0], dtype=jnp.int32), walks_per_node)

    def step(node, k):
        nxt = sample_cdf(k, cdf[node])
        return nxt, nxt

    keys = jax.random.split(key, walk_length - 1)
    _, rest = jax.lax.scan(step, start, keys)
    return jnp.concatenate([start[None], rest], axis=0).T


def skipgram_pairs(walks: Array, window: int) -> tuple[Array, Array]:
    """(center, context) i32[P] pairs within ``window`` steps of each other, both directions."""
    centers, contexts = [], []
    for d in range(1, window + 1):
        a, b = walks[:, :-d].ravel(), walks[:, d:].ravel()
        centers += [a, b]
        contexts += [b, a]
    return jnp.concatenate(centers), jnp.concatenate(contexts)


def skipgram_loss(emb: dict, center: Array, context: Array, negative: Array) -> Array:
    """Negative-sampling loss: center, context i32[B], negative i32[B, K] -> f32[]."""
    u = emb["in"][center]  # [B, D]
    pos = jnp.sum(u * emb["out"][context], -1)
    neg = jnp.einsum("bd,bkd->bk", u, emb["out"][negative])
    return -jnp.mean(jax.nn.log_sigmoid(pos) + jnp.sum(jax.nn.log_sigmoid(-neg), -1))


@functools.partial(
    jax.jit, static_argnames=("n_nodes", "dim", "window", "n_negative", "steps", "batch_size")
)
def train_skipgram(
    key: Key,
    walks: Array,
    *,
    n_nodes: int,
    dim: int = 16,
    window: int = 3,
    n_negative: int = 5,
    steps: int = 500,
    batch_size: int = 256,
    learning_rate: float = 0.02,
) -> tuple[Array, Array]:
    """Skip-gram with negative sampling on the walks.

    Args:
      key: PRNG key.
      walks: i32[W, L] from ``random_walks``.
      n_nodes: I.
      dim: embedding size D.
      window: context window (steps either side).
      n_negative: K negative samples per pair.
      steps: Adam steps.
      batch_size: pairs per step.
      learning_rate: Adam learning rate.

    Returns:
      (embeddings f32[I, D] (the "in" vectors), losses f32[steps]).
    """
    center, context = skipgram_pairs(walks, window)
    counts = jnp.bincount(walks.ravel(), length=n_nodes).astype(jnp.float32)
    noise_cdf = jnp.cumsum(counts**0.75)
    k_in, k_train = jax.random.split(key)
    emb = {
        "in": jax.random.uniform(k_in, (n_nodes, dim), minval=-0.5, maxval=0.5) / dim,
        "out": jnp.zeros((n_nodes, dim)),
    }
    opt = optax.adam(learning_rate)

    def step(carry, k):
        emb, opt_state = carry
        k_pair, k_neg = jax.random.split(k)
        idx = jax.random.randint(k_pair, (batch_size,), 0, center.shape[0])
        neg = sample_cdf(k_neg, noise_cdf, (batch_size, n_negative))
        loss, grads = jax.value_and_grad(skipgram_loss)(emb, center[idx], context[idx], neg)
        updates, opt_state = opt.update(grads, opt_state, emb)
        return (optax.apply_updates(emb, updates), opt_state), loss

    (emb, _), losses = jax.lax.scan(step, (emb, opt.init(emb)), jax.random.split(k_train, steps))
    return emb["in"], losses


def deepwalk(
    key: Key,
    weights: Array,
    *,
    dim: int = 16,
    walks_per_node: int = 10,
    walk_length: int = 20,
    window: int = 3,
    n_negative: int = 5,
    steps: int = 500,
    batch_size: int = 256,
    learning_rate: float = 0.02,
) -> Array:
    """Graph embeddings u_g f32[I, D] of the nodes of ``weights`` (f32[I, I])."""
    k_walk, k_train = jax.random.split(key)
    walks = random_walks(k_walk, weights, walks_per_node=walks_per_node, walk_length=walk_length)
    emb, _ = train_skipgram(
        k_train,
        walks,
        n_nodes=weights.shape[0],
        dim=dim,
        window=window,
        n_negative=n_negative,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    return emb
