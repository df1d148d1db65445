"""TSUR (Xing et al., KDD 2021): temporal-structural user representations for LTV.

Written from the paper's reference code (``xmzzyo/LTV-prediction`` on GitHub, PyTorch + DGL,
``ltv-code/src``; read, not copied) in this codebase's style; the model is the reference's
``STPModel`` (``trainer.py``) with the defaults of its ``config.json``:

1. Temporal encoder (``encoder_temporal.py``, ``utils/wave_utils.py``): a multi-channel,
   learnable multilevel discrete wavelet transform (mWDN, Wang et al. KDD 2018) of the log1p
   revenue series. Each of ``channels`` random wavelet filter banks (length ``filter_len``)
   is a channel; each of ``levels`` levels has a trainable low-pass and high-pass matrix
   initialized to the wavelet's analysis operator, then a sigmoid, the low-pass output
   feeding the next level. The coefficients of each level (channels as features) go through
   their own bidirectional GRU (the ``levels`` high-pass bands and the last low-pass band),
   and a penalty (sum of Frobenius norms, weight ``wavelet_weight``) keeps the matrices near
   their wavelet initialization (:class:`MultiChannelWavelet`).
2. Structural encoder (``pretrain.py``'s GAT, ``build_graph.py``, ``gcn.py``): a graph
   attention network over a k-nearest-neighbour graph of the customers, L2 distance between
   node features = revenue series (log1p) and attributes (one-hot categories, numbers), as
   the reference's ``features = cat(ts_x, feat_x)`` (:class:`CustomerGraph`,
   :class:`GraphEncoder`).
3. Cluster alignment (``dual_loss.py``'s ``RegLoss``): the low-frequency temporal state and
   the structural embedding are each projected (tanh) and softly assigned to ``clusters``
   shared, trainable centroids (orthogonal init; Student-t kernel on ``tanh`` of the dot
   product, sharpened to DEC's target distribution); the loss is the Jensen-Shannon
   divergence of the two assignments (weight ``cluster_weight``) (:class:`ClusterAlignment`).
   ``kmeans.py`` and ``mincut_pool.py`` are not part of the reference's model (``gcn.py``
   imports them; its ``GCNClusterP``, unused by ``STPModel``, clusters with sklearn's
   MiniBatchKMeans and calls min-cut pooling only in commented-out code), so they have no
   counterpart here.
4. Decoder and loss (``decoder.py``'s ``MLPDecoder``, ``trainer.py``'s ``criterion``):
   multi-head self-attention over the GRUs' final states (both directions of every level),
   averaged; a gated fusion with the normalized structural embedding; ``tanh`` dense layer;
   the sum of the log1p history appended; an MLP ``3h -> h -> h/2`` (LeakyReLU) to the LTV
   (ReLU). Loss: smooth L1 + ``wavelet_weight`` * penalty + ``cluster_weight`` * JS. (The
   reference computes L1/L2 weight norms but never adds them to the loss; nor here.)

Choices where the reference and our data differ (all recorded in the CDLtvS README too):

- Wavelets: PyWavelets is not used; the filter banks are built here. The reference draws
  random length-10 filters and pushes them towards the wavelet conditions (``init_wave_filter``:
  sum, unit norm, zero-sum high-pass; its unused ``Regularisation`` lists the exact ones).
  Here each channel's low-pass filter is an exactly orthonormal random wavelet from a
  paraunitary lattice (:func:`orthonormal_lowpass`, angles summing to pi/4, so the filter
  sums to sqrt(2)), the high-pass its quadrature mirror. Each level's matrix is the
  periodized *decimating* analysis operator (``x -> a`` of half length, an exact DWT at
  initialization, perfect reconstruction) where the reference uses a full-length banded
  matrix followed by average pooling; biases start at 0 and no off-band noise is added.
  The series is zero-padded on the left (no purchase before the window) to a multiple of
  ``2 ** levels`` (the reference's 30 days are truncated instead).
- Graph, inductive: nodes are the training samples; every sample (training, validation or
  test) gets its ``k`` nearest training samples of *other* customers (never itself or its
  own customer's other anchors, whose history overlaps its label window), by the stated
  distance only; labels are never read. The reference builds one transductive graph over
  all users (train, validation and test, features only) with faiss ``k = 11`` including
  the node itself (so 10 neighbours) and adds the reverse edges (``dgl.to_bidirected``). A
  new customer has no reverse edges into a training graph, so there are none here, and each
  node attends to itself as well (a self-loop, as in the original GAT), which is how the
  reference's nodes see their own features (through the reverse edges).
- GAT depth: minibatches carry each sample's 2-hop tree (``g_nbr: i32[N, k]``,
  ``g_nbr2: i32[N, k, k]``, indices into the training node table), so the GAT has two
  layers (a multi-head hidden layer, heads concatenated, and a multi-head output layer,
  heads averaged) where the reference has three hidden layers and the output one over the
  full graph. Its activation is None as in the reference (DGL ``GATConv(activation=None)``).
  A GAT layer is linear in its neighbours, so the first-hop nodes' layer 1 and layer 2
  attend in their input space (:meth:`GATLayer.attend_inputs`: the same values up to float
  rounding, without projecting every neighbour of the 2-hop tree: a 2.0x faster train step
  on Complete Journey, ``experiments/benchmarks/cdltvs_baseline_steps.py``).
  The reference's input BatchNorm is a fixed standardization by the training nodes' mean
  and standard deviation. The training node table is a frozen parameter of the model
  (``stop_gradient``: zero gradient, so Adam never moves it).
- Node features add the share of the history window that is available (0 for C_na), so a
  customer without target history is not mistaken for one who bought nothing.
- Sizes: every hidden size is ``h`` (the tuned ``hidden``; the reference: GRU and GAT
  hidden 100, structural 30, decoder 100, MLP 300-100-50, i.e. ``3h, h, h/2`` at h = 100).
- Labels: divided by their training mean (as every model here); the reference's labels are
  sums of log1p daily revenue. Adam at a constant learning rate with early stopping on the
  validation MAE (:func:`dmeta.ltv.train.fit`) where the reference adds ReduceLROnPlateau;
  no dropout (the reference: 0.1), LayerNorm instead of BatchNorm before the fusion (the fit
  carries no batch statistics), like the other neural baselines here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.ltv.data import CrossDomainData
from dmeta.ltv.encoders import output_relu
from dmeta.ltv.train import fit, model_batch, predict
from dmeta.nn.functional import split_params
from dmeta.nn.rnn import GRU
from dmeta.types import Array

log = logging.getLogger(__name__)

Predictor = Callable[[CrossDomainData], np.ndarray]


# ----------------------------------------------------------------------------- wavelets


def orthonormal_lowpass(angles: Array) -> Array:
    """Low-pass filters of orthonormal two-channel filter banks from lattice angles.

    The polyphase matrix ``R(t_K) D(z) ... D(z) R(t_1)`` (rotations ``R``, delay
    ``D = diag(1, z^-1)``) is paraunitary for any angles, so the filter is orthonormal to
    its own even shifts; its taps sum to ``cos(sum t) + sin(sum t)``, i.e. sqrt(2) when the
    angles sum to pi/4. One angle of pi/4 gives Haar.

    Args:
      angles: f32[..., K].

    Returns:
      f32[..., 2K] low-pass taps ``lo[2n] = P00[n], lo[2n+1] = P01[n]``.
    """
    c, s = jnp.cos(angles), jnp.sin(angles)
    p00, p01, p10, p11 = c[..., :1], s[..., :1], -s[..., :1], c[..., :1]
    batch = [(0, 0)] * (angles.ndim - 1)
    for k in range(1, angles.shape[-1]):
        p00, p01 = (jnp.pad(p, batch + [(0, 1)]) for p in (p00, p01))
        p10, p11 = (jnp.pad(p, batch + [(1, 0)]) for p in (p10, p11))  # delayed row
        ck, sk = c[..., k : k + 1], s[..., k : k + 1]
        p00, p01, p10, p11 = (ck * p00 + sk * p10, ck * p01 + sk * p11,
                              ck * p10 - sk * p00, ck * p11 - sk * p01)  # fmt: skip
    return jnp.stack([p00, p01], -1).reshape(angles.shape[:-1] + (-1,))


def random_lowpass(key: Array, channels: int, length: int) -> Array:
    """f32[channels, length] random orthonormal wavelet low-pass filters (``length / 2``
    lattice angles, all but the last uniform in [0, 2 pi), the last making them sum to pi/4).

    Raises:
      ValueError: an odd ``length``.
    """
    if length % 2 or length < 2:
        raise ValueError(f"wavelet filter length must be even and >= 2, got {length}")
    free = jax.random.uniform(key, (channels, length // 2 - 1), maxval=2 * np.pi)
    last = np.pi / 4 - free.sum(-1, keepdims=True)
    return orthonormal_lowpass(jnp.concatenate([free, last], -1))


def highpass(lo: Array) -> Array:
    """f32[..., N] quadrature-mirror high-pass ``hi[n] = (-1)^n lo[N-1-n]`` of f32[..., N]."""
    return lo[..., ::-1] * jnp.asarray((-1.0) ** np.arange(lo.shape[-1]), lo.dtype)


@functools.lru_cache(maxsize=64)
def _periodic_taps(n_taps: int, length: int) -> np.ndarray:
    """f32[n_taps, length // 2, length]: 1 where tap n of output j reads input
    ``(2j + n) mod length`` (summed over wraps when the filter is longer than the input)."""
    taps = np.zeros((n_taps, length // 2, length), np.float32)
    j = np.arange(length // 2)
    for n in range(n_taps):
        taps[n, j, (2 * j + n) % length] += 1.0
    return taps


def analysis_matrix(filt: Array, length: int) -> Array:
    """Periodized decimating analysis operator of filters f32[..., N] on even ``length``:
    f32[..., length // 2, length] with ``(W x)_j = sum_n filt[n] x[(2j + n) mod length]``."""
    return jnp.einsum("...n,njm->...jm", filt, _periodic_taps(filt.shape[-1], length))


def padded_length(length: int, levels: int) -> int:
    """The series length rounded up to a multiple of ``2 ** levels``."""
    step = 2**levels
    return -(-length // step) * step


def dwt(x: Array, lo: Array, levels: int) -> list[Array]:
    """Multilevel periodized DWT of f32[..., L] (``L`` divisible by ``2 ** levels``) with
    the orthonormal low-pass ``lo: f32[N]`` and its :func:`highpass`.

    Returns:
      ``[d_1, ..., d_levels, a_levels]``: detail coefficients f32[..., L / 2^l] per level
      and the last approximation.
    """
    hi, out = highpass(lo), []
    for _ in range(levels):
        n = x.shape[-1]
        out.append(jnp.einsum("...m,jm->...j", x, analysis_matrix(hi, n)))
        x = jnp.einsum("...m,jm->...j", x, analysis_matrix(lo, n))
    return out + [x]


def _frobenius(x: Array) -> Array:
    """f32[...] Frobenius norms over the last two axes, with a finite gradient at 0."""
    return jnp.sqrt(jnp.sum(jnp.square(x), (-2, -1)) + 1e-12)


class MultiChannelWavelet(nnx.Module):
    """Learnable multi-channel wavelet decomposition (mWDN) of a series.

    Level l of channel c: ``hi = sigmoid(W^hi_{l,c} x + b)``, ``lo = sigmoid(W^lo_{l,c} x +
    b)``, ``lo`` feeding level l + 1; ``W`` starts at the periodized analysis operator of
    the channel's random orthonormal wavelet (:func:`analysis_matrix`), ``b`` at 0, so at
    initialization the pre-sigmoid coefficients are the exact DWT (:func:`dwt`).

    Args:
      length: input length (a multiple of ``2 ** levels``).
      channels: wavelet filter banks C.
      levels: decomposition levels.
      filter_len: taps per filter (even).
      rngs: NNX random streams.
    """

    def __init__(self, length: int, *, channels: int, levels: int, filter_len: int,
                 rngs: nnx.Rngs):  # fmt: skip
        if length % 2**levels:
            raise ValueError(f"length {length} is not a multiple of 2^{levels}")
        lo = random_lowpass(rngs.params(), channels, filter_len)
        self.filters = nnx.Param(lo)  # frozen: the penalty's anchor
        self.w_lo, self.w_hi = nnx.List(), nnx.List()
        self.b_lo, self.b_hi = nnx.List(), nnx.List()
        for level in range(levels):
            n = length // 2**level
            self.w_lo.append(nnx.Param(analysis_matrix(lo, n)))
            self.w_hi.append(nnx.Param(analysis_matrix(highpass(lo), n)))
            self.b_lo.append(nnx.Param(jnp.zeros((channels, n // 2))))
            self.b_hi.append(nnx.Param(jnp.zeros((channels, n // 2))))

    def __call__(self, x: Array) -> list[Array]:
        """Decomposes f32[B, L] into ``[hi_1, ..., hi_levels, lo_levels]``, each
        f32[B, L / 2^l, C] (time, then channels as features)."""
        x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.filters.shape[0], x.shape[-1]))
        out = []
        for w_lo, w_hi, b_lo, b_hi in zip(self.w_lo, self.w_hi, self.b_lo, self.b_hi,
                                          strict=True):  # fmt: skip
            hi = jax.nn.sigmoid(jnp.einsum("bcm,cjm->bcj", x, w_hi[...]) + b_hi[...])
            x = jax.nn.sigmoid(jnp.einsum("bcm,cjm->bcj", x, w_lo[...]) + b_lo[...])
            out.append(jnp.swapaxes(hi, 1, 2))
        return out + [jnp.swapaxes(x, 1, 2)]

    def penalty(self) -> Array:
        """f32[] sum over levels, bands and channels of ``||W - W_wavelet||_F``."""
        lo = jax.lax.stop_gradient(self.filters[...])
        total = jnp.zeros(())
        for w_lo, w_hi in zip(self.w_lo, self.w_hi, strict=True):
            n = w_lo.shape[-1]
            total += _frobenius(w_lo[...] - analysis_matrix(lo, n)).sum()
            total += _frobenius(w_hi[...] - analysis_matrix(highpass(lo), n)).sum()
        return total


class BiGRU(nnx.Module):
    """Bidirectional GRU: the final states of a forward and a backward GRU."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.fwd = GRU(in_features, hidden, rngs=rngs)
        self.bwd = GRU(in_features, hidden, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """f32[B, S, F] -> f32[B, 2, H] (forward, backward)."""
        return jnp.stack([self.fwd(x), self.bwd(x[:, ::-1])], 1)


# ----------------------------------------------------------------------------- graph


def node_features(data: CrossDomainData) -> np.ndarray:
    """f32[N, F] graph node features of the target domain: log1p revenue series (L), share
    of the window with history (1; 0 for C_na), one-hot categorical portrait, numeric
    portrait. No label is read."""
    onehot = [np.eye(size, dtype=np.float32)[data.t_cat[:, c]]
              for c, size in enumerate(data.t_cat_sizes)]  # fmt: skip
    parts = [np.log1p(np.maximum(data.t_series, 0.0)), data.t_observed.mean(1, keepdims=True),
             *onehot, data.t_num]  # fmt: skip
    return np.concatenate(parts, 1).astype(np.float32)


def nearest(
    query: np.ndarray,
    query_customer: np.ndarray,
    table: np.ndarray,
    table_customer: np.ndarray,
    k: int,
    *,
    chunk: int = 512,
) -> np.ndarray:
    """The ``k`` rows of ``table`` nearest to each query row by Euclidean distance, leaving
    out the rows of the query's own customer; ordered nearest first (ties in any order).

    Args:
      query: f32[Nq, F]; query_customer: [Nq] customer ids.
      table: f32[M, F]; table_customer: [M] customer ids.
      k: neighbours per query.
      chunk: queries per distance block (memory ``chunk * M``).

    Returns:
      i32[Nq, k] row indices into ``table``.

    Raises:
      ValueError: a query has fewer than ``k`` rows of other customers.
    """
    t = table.astype(np.float64)
    t_sq = np.sum(t**2, 1)
    out = np.empty((len(query), k), np.int32)
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk].astype(np.float64)
        d = np.sum(q**2, 1)[:, None] + t_sq[None, :] - 2.0 * q @ t.T
        d[query_customer[start : start + chunk, None] == table_customer[None, :]] = np.inf
        if k > len(t) or not np.isfinite(np.partition(d, k - 1, 1)[:, k - 1]).all():
            raise ValueError(f"fewer than k={k} graph nodes of other customers")
        idx = np.argpartition(d, k - 1, 1)[:, :k]
        order = np.argsort(np.take_along_axis(d, idx, 1), 1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(idx, order, 1)
    return out


@dataclasses.dataclass(frozen=True)
class CustomerGraph:
    """The inductive customer kNN graph: nodes are the training samples.

    Every sample (training or new) has as neighbours its ``k`` nearest training samples of
    other customers (:func:`nearest` on :func:`node_features`); a neighbour's own
    neighbours, for the second hop, leave out the sample's customer too, so a sample never
    reaches itself or its customer through the graph and new customers get neighbourhoods
    of the same kind. Only attributes and history enter, never labels.

    Attributes:
      features: f32[M, F] node features of the training samples.
      customer: [M] their customers.
      neighbours: i32[M, k + s] each node's nearest nodes of other customers (``s``: the
        most samples one customer has, so that k remain after leaving one customer out).
      k: neighbours per node.
      mean, std: f32[F] the training nodes' feature statistics (GAT input standardization).
    """

    features: np.ndarray
    customer: np.ndarray
    neighbours: np.ndarray
    k: int
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def build(cls, train: CrossDomainData, k: int) -> CustomerGraph:
        """The graph over ``train``'s samples with ``k`` neighbours per node."""
        x = node_features(train)
        surplus = int(np.unique(train.customer, return_counts=True)[1].max())
        nbr = nearest(x, train.customer, x, train.customer, k + surplus)
        std = np.maximum(x.std(0), 1e-6).astype(np.float32)
        return cls(x, train.customer, nbr, k, x.mean(0).astype(np.float32), std)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """f32[..., F] node features in training-node standard units."""
        return ((x - self.mean) / self.std).astype(np.float32)

    def arrays(self, data: CrossDomainData) -> dict[str, np.ndarray]:
        """Per-sample graph inputs of ``data``: ``g_x: f32[N, F]`` standardized node
        features, ``g_nbr: i32[N, k]`` first-hop and ``g_nbr2: i32[N, k, k]`` second-hop
        neighbours (rows of the training node table)."""
        x = node_features(data)
        nbr = nearest(x, data.customer, self.features, self.customer, self.k)
        cand = self.neighbours[nbr]  # [N, k, k + s]
        other = self.customer[cand] != data.customer[:, None, None]
        keep = np.argsort(~other, -1, kind="stable")[..., : self.k]
        nbr2 = np.take_along_axis(cand, keep, -1).astype(np.int32)
        return {"g_x": self.standardize(x), "g_nbr": nbr, "g_nbr2": nbr2}


class GATLayer(nnx.Module):
    """Multi-head graph attention (Velickovic et al. 2018) as DGL's ``GATConv`` the
    reference uses: ``e_ij = LeakyReLU_0.2(a_src . W h_j + a_dst . W h_i)``, softmax over the
    node's neighbours, ``sum_j alpha_ij W h_j + b`` per head; no activation, no residual.

    Args:
      in_features: input size.
      out: output size per head.
      heads: attention heads.
      rngs: NNX random streams.
    """

    def __init__(self, in_features: int, out: int, heads: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(2.0, "fan_avg", "normal")  # DGL: xavier, relu gain
        self.heads, self.out = heads, out
        self.fc = nnx.Linear(in_features, heads * out, use_bias=False, kernel_init=init,
                             rngs=rngs)  # fmt: skip
        self.attn_src = nnx.Param(init(rngs.params(), (heads, out)))
        self.attn_dst = nnx.Param(init(rngs.params(), (heads, out)))
        self.bias = nnx.Param(jnp.zeros((heads, out)))

    def project(self, x: Array) -> Array:
        """f32[..., in] -> f32[..., heads, out] (``W h``)."""
        return self.fc(x).reshape(x.shape[:-1] + (self.heads, self.out))

    def __call__(self, dst: Array, src: Array) -> Array:
        """Attends from projected nodes f32[..., heads, out] to their projected neighbours
        f32[..., n, heads, out] (the node itself among them): f32[..., heads, out]."""
        dst_score = jnp.sum(dst * self.attn_dst[...], -1)[..., None, :]  # [..., 1, heads]
        e = jnp.sum(src * self.attn_src[...], -1) + dst_score
        alpha = jax.nn.softmax(jax.nn.leaky_relu(e, 0.2), axis=-2)  # [..., n, heads]
        return jnp.einsum("...nh,...nho->...ho", alpha, src) + self.bias[...]

    def attend_inputs(self, dst: Array, src: Array) -> Array:
        """``self(self.project(dst), self.project(src))`` from unprojected nodes f32[..., in]
        and neighbours f32[..., n, in], in the input space: the attention scores through
        ``W a`` and the neighbours averaged before the projection (the layer is linear in
        them), so no f32[..., n, heads, out] array is formed. f32[..., heads, out]."""
        w = self.fc.kernel[...].reshape(-1, self.heads, self.out)  # [in, heads, out]
        src_score = src @ jnp.einsum("iho,ho->ih", w, self.attn_src[...])  # [..., n, heads]
        dst_score = dst @ jnp.einsum("iho,ho->ih", w, self.attn_dst[...])  # [..., heads]
        e = src_score + dst_score[..., None, :]
        alpha = jax.nn.softmax(jax.nn.leaky_relu(e, 0.2), axis=-2)  # [..., n, heads]
        mixed = jnp.einsum("...nh,...ni->...hi", alpha, src)  # [..., heads, in]
        return jnp.einsum("...hi,iho->...ho", mixed, w) + self.bias[...]


class GraphEncoder(nnx.Module):
    """Two GAT layers on each sample's 2-hop tree of the :class:`CustomerGraph` (every node
    also attends to itself): a hidden layer (heads concatenated) and an output layer (heads
    averaged).

    Args:
      n_features: F node features.
      hidden: output size per head h.
      heads: attention heads.
      nodes: f32[M, F] standardized training node features (frozen).
      rngs: NNX random streams.
    """

    def __init__(self, n_features: int, hidden: int, heads: int, *, nodes: np.ndarray,
                 rngs: nnx.Rngs):  # fmt: skip
        self.nodes = nnx.Param(jnp.asarray(nodes, jnp.float32))
        self.layer1 = GATLayer(n_features, hidden, heads, rngs=rngs)
        self.layer2 = GATLayer(heads * hidden, hidden, heads, rngs=rngs)

    def __call__(self, x: Array, nbr: Array, nbr2: Array) -> Array:
        """Structural embeddings f32[B, h] of nodes f32[B, F] with neighbours i32[B, k] and
        second-hop neighbours i32[B, k, k] (rows of ``nodes``)."""
        nodes = jax.lax.stop_gradient(self.nodes[...])
        x1, x2 = nodes[nbr], nodes[nbr2]  # [B, k, F], [B, k, k, F]
        p0, p1 = self.layer1.project(x), self.layer1.project(x1)
        h0 = self.layer1(p0, jnp.concatenate([p0[:, None], p1], 1))  # [B, H, O]
        h1 = self.layer1.attend_inputs(x1, jnp.concatenate([x1[:, :, None], x2], 2))
        z0, z1 = h0.reshape(h0.shape[0], -1), h1.reshape(h1.shape[:2] + (-1,))
        return self.layer2.attend_inputs(z0, jnp.concatenate([z0[:, None], z1], 1)).mean(-2)


# ----------------------------------------------------------------------------- alignment


def soft_assignment(z: Array, centroids: Array, v: float = 1.0) -> Array:
    """f32[N, K] Student-t assignments of f32[N, d] to centroids f32[K, d], applied as in the
    reference to the squashed similarity ``tanh(z c^T)`` rather than to a distance:
    ``q ~ (1 + tanh(z c^T)^2 / v)^(-(v+1)/2)``, rows summing to 1."""
    sim = jnp.tanh(z @ centroids.T)
    q = (1.0 + jnp.square(sim) / v) ** (-(v + 1.0) / 2.0)
    return q / jnp.sum(q, -1, keepdims=True)


def target_distribution(q: Array, weight: Array) -> Array:
    """f32[N, K] DEC's sharpened targets ``q^2 / f`` (f: the batch's soft cluster sizes over
    the rows of weight > 0), rows summing to 1."""
    p = jnp.square(q) / jnp.sum(weight[:, None] * q, 0)
    return p / jnp.sum(p, -1, keepdims=True)


def js_divergence(p: Array, q: Array, weight: Array) -> Array:
    """f32[] weighted mean over rows of the Jensen-Shannon divergence of f32[N, K] rows."""
    m = 0.5 * (p + q)
    kl = lambda a: jnp.sum(a * (jnp.log(a) - jnp.log(m)), -1)  # noqa: E731
    return jnp.sum(weight * 0.5 * (kl(p) + kl(q))) / jnp.sum(weight)


class ClusterAlignment(nnx.Module):
    """Cluster-alignment regularizer: temporal and structural representations, each
    projected by a tanh dense layer, softly assigned to shared trainable centroids
    (orthogonal init); the loss is the JS divergence of their target distributions.

    Args:
      te_dim, se_dim: temporal and structural representation sizes.
      clusters: K centroids.
      dim: projection / centroid size.
      rngs: NNX random streams.
    """

    def __init__(self, te_dim: int, se_dim: int, clusters: int, dim: int, *, rngs: nnx.Rngs):
        glorot = nnx.initializers.glorot_normal()
        self.t_proj = nnx.Linear(te_dim, dim, kernel_init=glorot, rngs=rngs)
        self.s_proj = nnx.Linear(se_dim, dim, kernel_init=glorot, rngs=rngs)
        self.centroids = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (clusters, dim)))

    def __call__(self, te: Array, se: Array, weight: Array) -> Array:
        """f32[] the loss for f32[N, te_dim], f32[N, se_dim] and sample weights f32[N]."""
        c = self.centroids[...]
        p_t = target_distribution(soft_assignment(jnp.tanh(self.t_proj(te)), c), weight)
        p_s = target_distribution(soft_assignment(jnp.tanh(self.s_proj(se)), c), weight)
        return js_divergence(p_t, p_s, weight)


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class TSUROut:
    """pred: f32[N] LTV (scaled units); te: f32[N, h] low-frequency temporal state; se:
    f32[N, h] structural embedding."""

    pred: Array
    te: Array
    se: Array


class TSUR(nnx.Module):
    """TSUR on a model batch with graph arrays (:meth:`CustomerGraph.arrays`).

    Args:
      hidden: h.
      length: padded series length (:func:`padded_length`).
      n_features: F node features.
      nodes: f32[M, F] standardized training node features.
      channels, levels, filter_len: the wavelet decomposition.
      heads: attention heads of the GAT and of the decoder's attention (divides h).
      clusters, cluster_dim: the cluster alignment.
      rngs: NNX random streams.
    """

    def __init__(self, hidden: int, *, length: int, n_features: int, nodes: np.ndarray,
                 channels: int = 50, levels: int = 3, filter_len: int = 10, heads: int = 4,
                 clusters: int = 300, cluster_dim: int = 50, rngs: nnx.Rngs):  # fmt: skip
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.length = length
        glorot = nnx.initializers.glorot_normal()
        dense = functools.partial(nnx.Linear, kernel_init=glorot, rngs=rngs)
        self.wavelet = MultiChannelWavelet(length, channels=channels, levels=levels,
                                           filter_len=filter_len, rngs=rngs)  # fmt: skip
        self.temporal = nnx.List([BiGRU(channels, hidden, rngs=rngs) for _ in range(levels + 1)])
        self.attn = nnx.MultiHeadAttention(heads, hidden, keep_rngs=False, rngs=rngs)
        self.graph = GraphEncoder(n_features, hidden, heads, nodes=nodes, rngs=rngs)
        self.align = ClusterAlignment(hidden, hidden, clusters, cluster_dim, rngs=rngs)
        self.se_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.gate_r, self.gate_g = dense(2 * hidden, hidden), dense(2 * hidden, hidden)
        self.hidden_fc = dense(hidden, hidden)
        sizes = (hidden + 1, 3 * hidden, hidden, max(hidden // 2, 1))
        self.mlp = nnx.List([dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        # starts at the mean (scaled) label, like the other baselines' output layers
        self.out = dense(sizes[-1], 1, bias_init=nnx.initializers.ones)

    def encode(self, b: dict[str, Array]) -> TSUROut:
        """Prediction and the two representations of a batch."""
        x = jnp.log1p(jnp.maximum(b["t_series"], 0.0))  # [B, L]
        coeffs = self.wavelet(jnp.pad(x, ((0, 0), (self.length - x.shape[1], 0))))
        states = [enc(c) for enc, c in zip(self.temporal, coeffs, strict=True)]  # [B, 2, h]
        a = self.attn(jnp.concatenate(states, 1), decode=False).mean(1)
        se = self.graph(b["g_x"], b["g_nbr"], b["g_nbr2"])
        both = jnp.concatenate([a, self.se_norm(se)], -1)
        gate = jax.nn.sigmoid(self.gate_g(both))
        fused = gate * jnp.tanh(self.gate_r(both)) + (1.0 - gate) * a
        z = jnp.concatenate([jnp.tanh(self.hidden_fc(fused)), x.sum(1, keepdims=True)], -1)
        for layer in self.mlp:
            z = jax.nn.leaky_relu(layer(z), 0.01)
        return TSUROut(output_relu(self.out(z))[..., 0], states[-1].mean(1), se)

    def __call__(self, b: dict[str, Array]) -> Array:
        """f32[N] LTV in the labels' scaled units."""
        return self.encode(b).pred

    def losses(self, b: dict[str, Array]) -> tuple[Array, Array, Array]:
        """``(pred, wavelet penalty, cluster-alignment JS)`` of a batch."""
        out = self.encode(b)
        return out.pred, self.wavelet.penalty(), self.align(out.te, out.se, b["weight"])


def smooth_l1(y: Array, pred: Array, weight: Array) -> Array:
    """Weighted mean Huber loss with threshold 1 (PyTorch's ``smooth_l1_loss``)."""
    return jnp.sum(weight * optax.huber_loss(pred, y, delta=1.0)) / jnp.sum(weight)


# ----------------------------------------------------------------------------- fit


def _model(arch: tuple, nodes: np.ndarray, seed: int) -> TSUR:
    hidden, length, n_features, channels, levels, filter_len, heads, clusters, dim = arch
    return TSUR(hidden, length=length, n_features=n_features, nodes=nodes, channels=channels,
                levels=levels, filter_len=filter_len, heads=heads, clusters=clusters,
                cluster_dim=dim, rngs=nnx.Rngs(seed))  # fmt: skip


@functools.lru_cache(maxsize=16)
def _tsur_fns(arch: tuple, wavelet_weight: float, cluster_weight: float):
    """(loss_fn, predict_fn) of TSUR for ``arch`` (built once; the node table is a
    parameter, so any training set of that feature width shares them)."""
    model = _model(arch, np.zeros((1, arch[2]), np.float32), 0)
    apply_losses, _ = split_params(model, "losses")
    apply, _ = split_params(model)

    def loss_fn(p, b, lam):
        pred, wave, align = apply_losses(p, b)
        ltv = smooth_l1(b["t_y"], pred, b["weight"])
        loss = ltv + wavelet_weight * wave + cluster_weight * align
        return loss, {"loss": loss, "ltv": ltv, "wavelet": wave, "align": align}

    return loss_fn, apply


def tsur(
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    seed: int = 0,
    hidden: int = 128,
    channels: int = 50,
    levels: int = 3,
    filter_len: int = 10,
    neighbours: int = 10,
    heads: int = 4,
    clusters: int = 300,
    cluster_dim: int = 50,
    wavelet_weight: float = 0.03,
    cluster_weight: float = 0.01,
    **fit_kwargs,
) -> Predictor:
    """Trains :class:`TSUR` on the target domain of ``train`` with Adam and early stopping on
    the validation MAE (:func:`dmeta.ltv.train.fit`; ``fit_kwargs`` as for
    :func:`dmeta.ltv.baselines.neural_baseline`). The customer graph is built from the
    training samples' features (:class:`CustomerGraph`); validation and test samples join it
    as new nodes with their nearest training customers. Defaults: the reference's
    ``config.json`` and ``trainer.py`` (50 channels, 3 levels, length-10 filters, 10
    neighbours, 4 heads, 300 clusters of size 50, weights 0.03 and 0.01).

    Returns:
      ``predict(data) -> f32[N]`` target-domain LTV in the labels' units.
    """
    graph = CustomerGraph.build(train, neighbours)
    length = padded_length(train.t_series.shape[1], levels)
    n_features = graph.features.shape[1]
    arch = (hidden, length, n_features, channels, levels, filter_len, heads, clusters, cluster_dim)
    loss_fn, predict_fn = _tsur_fns(arch, float(wavelet_weight), float(cluster_weight))
    _, params = split_params(_model(arch, graph.standardize(graph.features), seed))
    scale = float(max(train.t_y.mean(), 1e-6))

    def batch(data: CrossDomainData) -> dict[str, np.ndarray]:
        return {**model_batch(data, 1.0, scale), **graph.arrays(data)}

    res = fit(loss_fn, predict_fn, params, batch(train), batch(val), label="t_y",
              desc=f"tsur hidden={hidden}", seed=seed, **fit_kwargs)  # fmt: skip
    best = res.best_state.params

    def predict_ltv(data: CrossDomainData) -> np.ndarray:
        return (predict(predict_fn, best, batch(data)) * scale).astype(np.float32)

    return predict_ltv
