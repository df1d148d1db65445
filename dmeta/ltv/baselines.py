"""Baselines of the CDLtvS comparison (Table 1): classical, single-domain and cross-domain.

Every baseline is ``name(train, val, *, seed, **hyperparameters) -> predict``: it fits on
``train`` (early stopping / model choice on ``val``) and returns ``predict(data) -> f32[N]``,
the target-domain LTV of any samples in the label's units (the protocol scores it on the
validation customers to tune and on the test customers to report). Single-domain methods see
only the target domain (series, availability flags and, where the method uses them,
portraits); C_na customers reach them with an empty history, as in the protocol.

PTUPCDR (:func:`ptupcdr`) trains in stages; TSUR (:mod:`dmeta.ltv.tsur`) has its own module,
since it needs a customer graph built from the training samples and gathered into every batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special
from flax import nnx

from dmeta.baselines.classical import gbm_regressor
from dmeta.ltv.data import CrossDomainData
from dmeta.ltv.encoders import TCN, DeepFM, output_relu, series_inputs
from dmeta.ltv.losses import ltv_loss
from dmeta.ltv.train import fit, model_batch, predict
from dmeta.nn.functional import split_params
from dmeta.nn.rnn import LSTM

log = logging.getLogger(__name__)

Predictor = Callable[[CrossDomainData], np.ndarray]


# ----------------------------------------------------------------------------- classical


def _history_mean_fallback(train: CrossDomainData) -> float:
    """Mean training label of customers without target history (what a history-only model
    can say about them)."""
    none = train.t_observed.sum(1) == 0
    return float(train.t_y[none].mean()) if none.any() else float(train.t_y.mean())


def arima(train: CrossDomainData, val: CrossDomainData, *, seed: int = 0) -> Predictor:
    """ARIMA(1,0,0) per customer on the target series, conditional least squares (closed form,
    vectorized over customers), forecasting the next ``horizon`` periods. Series too short or
    flat fall back to their mean; customers without history get the C_na training mean."""
    del val, seed
    return functools.partial(_ar1_forecast, fallback=_history_mean_fallback(train))


def _ar1_forecast(data: CrossDomainData, *, fallback: float) -> np.ndarray:
    """f32[N] summed AR(1) forecasts of each sample's own target series (see :func:`arima`)."""
    x = data.t_series.astype(np.float64)
    prev, nxt = x[:, :-1], x[:, 1:]
    mp, mn = prev.mean(1, keepdims=True), nxt.mean(1, keepdims=True)
    var = np.sum((prev - mp) ** 2, 1)
    phi = np.where(var > 1e-9, np.sum((prev - mp) * (nxt - mn), 1) / np.maximum(var, 1e-9), 0.0)
    phi = np.clip(phi, -0.99, 0.99)
    c = mn[:, 0] - phi * mp[:, 0]
    level, total = x[:, -1], np.zeros(len(x))
    for _ in range(data.horizon):
        level = c + phi * level
        total += level
    pred = np.maximum(total, 0.0)
    pred[data.t_observed.sum(1) == 0] = fallback
    return pred.astype(np.float32)


def _rfm(series: np.ndarray, observed: np.ndarray):
    """Discrete-period RFM: x repeat active periods, t_x and T in periods from the first one,
    n active periods and their mean amount."""
    active = (series > 0) & (observed > 0)
    n = active.sum(1)
    L = series.shape[1]
    first = np.where(n > 0, np.argmax(active, 1), L)
    last = np.where(n > 0, L - 1 - np.argmax(active[:, ::-1], 1), L)
    x = np.maximum(n - 1, 0).astype(float)
    t_x = (last - first).astype(float)
    T = (L - first).astype(float)
    m = np.where(n > 0, (series * active).sum(1) / np.maximum(n, 1), 0.0)
    return x, t_x, T, n, m


def _bgnbd_nll(log_params, x, t_x, T):
    r, alpha, a, b = np.exp(log_params)
    gl = scipy.special.gammaln
    a1 = gl(r + x) - gl(r) + r * np.log(alpha)
    a2 = gl(a + b) + gl(b + x) - gl(b) - gl(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(
        x > 0,
        np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return -np.sum(a1 + a2 + np.logaddexp(a3, a4))


def bgnbd_expected(params, t, x, t_x, T) -> np.ndarray:
    """BG/NBD (Fader, Hardie & Lee 2005) expected transactions in the next ``t`` periods."""
    r, alpha, a, b = params
    hyp = scipy.special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    num = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    den = 1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return num / den


def _gg_nll(log_params, n, m):
    p, q, v = np.exp(log_params)
    gl = scipy.special.gammaln
    ll = (
        gl(p * n + q)
        - gl(p * n)
        - gl(q)
        + q * np.log(v)
        + (p * n - 1) * np.log(m)
        + p * n * np.log(n)
        - (p * n + q) * np.log(v + n * m)
    )
    return -np.sum(ll)


def bgnbd_gamma_gamma(train: CrossDomainData, val: CrossDomainData, *, seed: int = 0) -> Predictor:
    """BG/NBD + Gamma-Gamma (numpy/scipy maximum likelihood) on the target domain, with periods
    as purchase occasions: LTV = E[transactions in ``horizon``] x E[spend per transaction].
    The expected count is capped at ``horizon`` (one occasion per period) and the spend at
    the largest training mean spend (guards against a degenerate fit on tiny data).
    Customers without target history get the C_na training mean."""
    del val, seed
    x, t_x, T, n, m = _rfm(train.t_series, train.t_observed)
    seen = n > 0
    # log-parameters bounded: E[Y(t)] needs a > 1, and without dropout in the data the
    # unbounded optimum runs off to a -> 0, b -> inf
    bounds = [(-8.0, 8.0), (-8.0, 8.0), (np.log(1.01), 8.0), (-8.0, 8.0)]
    res = scipy.optimize.minimize(
        _bgnbd_nll,
        np.array([0.0, 0.0, 0.5, 0.0]),
        args=(x[seen], t_x[seen], T[seen]),
        method="L-BFGS-B",
        bounds=bounds,
    )
    pos = seen & (m > 0)
    gg = scipy.optimize.minimize(
        _gg_nll,
        np.zeros(3),
        args=(n[pos], m[pos]),
        method="Nelder-Mead",
        options={"maxiter": 4000},
    ).x
    return functools.partial(
        _bgnbd_gg_forecast,
        bg=np.exp(res.x),
        gg=np.exp(gg),
        m_max=m[pos].max(),
        fallback=_history_mean_fallback(train),
    )


def _bgnbd_gg_forecast(
    data: CrossDomainData, *, bg: np.ndarray, gg: np.ndarray, m_max: float, fallback: float
) -> np.ndarray:
    """f32[N] LTV of fitted BG/NBD (``bg = r, alpha, a, b``) and Gamma-Gamma (``gg = p, q,
    v``) parameters for each sample's target history (see :func:`bgnbd_gamma_gamma`)."""
    x, t_x, T, n, m = _rfm(data.t_series, data.t_observed)
    p, q, v = gg
    spend = np.where(n > 0, p * (v + n * m) / np.maximum(p * n + q - 1, 1e-6), 0.0)
    count = bgnbd_expected(bg, float(data.horizon), x, t_x, np.maximum(T, 1))
    # discrete periods: at most one purchase occasion per period; spend within the seen range
    count = np.clip(np.nan_to_num(count, nan=0.0), 0.0, data.horizon)
    pred = count * np.clip(spend, 0.0, m_max)
    pred[n == 0] = fallback
    return pred.astype(np.float32)


def _tabular(d: CrossDomainData) -> np.ndarray:
    return np.concatenate([d.t_series, d.t_observed[:, -1:], d.t_cat, d.t_num], axis=1)


def two_stage_xgboost(
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    seed: int = 0,
    n_estimators: int = 300,
    max_depth: int = 4,
    learning_rate: float = 0.05,
    early_stopping: int = 20,
) -> Predictor:
    """Two-stage XGBoost (Drachen et al. 2018) on target series + portrait: a classifier for
    LTV > 0, a regressor of log1p(LTV) on the positives (both early-stopped on ``val``);
    prediction ``P(LTV > 0) * expm1(regression)``. The regressor is the shared
    :func:`dmeta.baselines.classical.gbm_regressor` without row / column subsampling."""
    import xgboost

    params = dict(
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
        early_stopping_rounds=early_stopping,
    )
    xt, xv = _tabular(train), _tabular(val)
    clf = xgboost.XGBClassifier(**params, n_jobs=1, random_state=seed)
    clf.fit(xt, train.t_y > 0, eval_set=[(xv, val.t_y > 0)], verbose=False)
    pt, pv = train.t_y > 0, val.t_y > 0
    reg = gbm_regressor(seed=seed, subsample=1.0, colsample_bytree=1.0, **params)
    reg.fit(
        xt[pt], np.log1p(train.t_y[pt]), eval_set=[(xv[pv], np.log1p(val.t_y[pv]))], verbose=False
    )

    def predict_ltv(data: CrossDomainData) -> np.ndarray:
        xs = _tabular(data)
        return (clf.predict_proba(xs)[:, 1] * np.expm1(np.maximum(reg.predict(xs), 0))).astype(
            np.float32
        )

    return predict_ltv


# ----------------------------------------------------------------------------- neural


class SeriesLSTM(nnx.Module):
    """Time-series LSTM on the target series only."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs, **_):
        self.rnn = LSTM(2, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)

    def __call__(self, b):
        h = self.rnn(series_inputs(b["t_series"], b["t_observed"]))
        return output_relu(self.out(h))[..., 0]


class SeriesTCN(nnx.Module):
    """Time-series TCN on the target series only."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs, **_):
        self.tcn = TCN(2, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)

    def __call__(self, b):
        return output_relu(self.out(self.tcn(series_inputs(b["t_series"], b["t_observed"]))))[
            ..., 0
        ]


def prob_sparse_attention(query, key, value, *, factor: int = 5, is_causal: bool = False, **_):
    """ProbSparse attention (Zhou et al., AAAI 2021) as ``nnx.MultiHeadAttention``'s
    ``attention_fn``: f32[N, Lq, H, D] queries, f32[N, Lk, H, D] keys / values.

    The ``u = min(Lq, factor * ceil(ln Lq))`` queries with the largest sparsity measurement
    ``M(q, K) = max_j s_qj - mean_j s_qj`` (``s = q k / sqrt(D)``) attend as usual; the
    others output the mean of V, or with ``is_causal`` its cumulative sum (as the reference
    code does). The paper estimates M on ``factor * ln Lk`` sampled keys to save time; here
    every key is used (the same ranking without the sampling noise). For ``u = Lq`` (``Lq <=
    12`` at ``factor = 5``) this is full attention.
    """
    lq, lk, d = query.shape[1], key.shape[1], query.shape[-1]
    raw = jnp.einsum("nqhd,nkhd->nhqk", query, key) / np.sqrt(d)
    causal = jnp.tril(jnp.ones((lq, lk), bool)) if is_causal else jnp.ones((lq, lk), bool)
    out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(jnp.where(causal, raw, -jnp.inf)), value)
    u = min(lq, factor * int(np.ceil(np.log(lq))))
    if u == lq:
        return out
    measure = raw.max(-1) - raw.mean(-1)  # [N, H, Lq]
    kth = jax.lax.top_k(measure, u)[0][..., -1:]
    active = jnp.moveaxis(measure >= kth, 1, 2)[..., None]  # [N, Lq, H, 1]
    lazy = jnp.cumsum(value, 1) if is_causal else value.mean(1, keepdims=True)
    return jnp.where(active, out, lazy)


def _positions(length: int, hidden: int) -> jax.Array:
    """f32[length, hidden] sinusoidal position encoding (Vaswani et al. 2017)."""
    pos = np.arange(length)[:, None] / 10000 ** (np.arange(0, hidden, 2)[None, :] / hidden)
    enc = np.zeros((length, hidden), np.float32)
    enc[:, 0::2], enc[:, 1::2] = np.sin(pos), np.cos(pos[:, : hidden // 2])
    return jnp.asarray(enc)


class _InformerLayer(nnx.Module):
    """Informer's encoder layer (ProbSparse self-attention, feed-forward 4h, post-norm) or,
    with ``cross``, its decoder layer (masked self-attention, full cross-attention, ...)."""

    def __init__(self, hidden, heads, factor, *, cross, rngs):
        attn = functools.partial(nnx.MultiHeadAttention, heads, hidden, keep_rngs=False, rngs=rngs)
        self.self_attn = attn(attention_fn=functools.partial(prob_sparse_attention, factor=factor))
        self.cross_attn = attn() if cross else None
        self.ff1 = nnx.Linear(hidden, 4 * hidden, rngs=rngs)
        self.ff2 = nnx.Linear(4 * hidden, hidden, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(hidden, rngs=rngs) for _ in range(2 + cross)])

    def __call__(self, x, memory=None):
        x = self.norms[0](x + self.self_attn(x, is_causal=memory is not None, decode=False))
        if memory is not None:
            x = self.norms[1](x + self.cross_attn(x, memory, decode=False))
        return self.norms[-1](x + self.ff2(jax.nn.gelu(self.ff1(x))))


class Informer(nnx.Module):
    """Informer (Zhou et al., AAAI 2021) on the target series: a token embedding (circular
    convolution, width 3) plus sinusoidal positions; two ProbSparse encoder layers with a
    self-attention distilling layer between them (circular convolution, norm, ELU, max-pool
    width 3 stride 2); a one-layer generative decoder fed the last ``L // 2`` steps and
    ``horizon`` zero placeholders, whose ``horizon`` outputs sum to the LTV (then a ReLU).

    Differences from the paper: no calendar (time-stamp) embedding, as the windows carry no
    date; LayerNorm instead of BatchNorm in the distilling layer (the fit carries no batch
    statistics); no dropout, like the other neural baselines here.
    """

    def __init__(self, hidden, *, horizon, rngs, heads=4, factor=5, **_):
        self.horizon = horizon
        conv = dict(kernel_size=(3,), padding="CIRCULAR", rngs=rngs)
        self.enc_embed, self.dec_embed = nnx.Conv(2, hidden, **conv), nnx.Conv(2, hidden, **conv)
        layer = functools.partial(_InformerLayer, hidden, heads, factor, rngs=rngs)
        self.encoder = nnx.List([layer(cross=False), layer(cross=False)])
        self.distil = nnx.Conv(hidden, hidden, **conv)
        self.distil_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.enc_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.decoder = layer(cross=True)
        self.dec_norm = nnx.LayerNorm(hidden, rngs=rngs)
        # each step starts at 1 / horizon, so the sum starts at the mean (scaled) label
        self.out = nnx.Linear(hidden, 1, bias_init=nnx.initializers.constant(1 / horizon),
                              rngs=rngs)  # fmt: skip

    def __call__(self, b):
        x = series_inputs(b["t_series"], b["t_observed"])  # [N, L, 2]
        length, hidden = x.shape[1], self.out.in_features
        h = self.encoder[0](self.enc_embed(x) + _positions(length, hidden))
        h = jax.nn.elu(self.distil_norm(self.distil(h)))
        h = nnx.max_pool(h, window_shape=(3,), strides=(2,), padding=((1, 1),))
        memory = self.enc_norm(self.encoder[1](h))
        start = x[:, length - max(length // 2, 1) :]
        dec_in = jnp.concatenate([start, jnp.zeros((x.shape[0], self.horizon, 2))], 1)
        y = self.dec_embed(dec_in) + _positions(dec_in.shape[1], hidden)
        y = self.dec_norm(self.decoder(y, memory))[:, -self.horizon :]
        return output_relu(self.out(y)[..., 0].sum(-1))


class _DomainEncoder(nnx.Module):
    """DeepFM(portrait) + TCN(series) of one domain, concatenated and fused to ``hidden``."""

    def __init__(self, cat_sizes, n_num, hidden, *, rngs):
        self.portrait = DeepFM(cat_sizes, n_num, hidden, rngs=rngs)
        self.series = TCN(2, hidden, rngs=rngs)
        self.fuse = nnx.Linear(2 * hidden, hidden, rngs=rngs)

    def __call__(self, b, d, *, sequence=False):
        e_p = self.portrait(b[f"{d}_cat"], b[f"{d}_num"])
        seq = self.series(series_inputs(b[f"{d}_series"], b[f"{d}_observed"]), sequence=True)
        e = nnx.relu(self.fuse(jnp.concatenate([e_p, seq[..., -1, :]], -1)))
        return (e, seq) if sequence else e


class ZILN(nnx.Module):
    """Zero-inflated lognormal deep model (Wang et al. 2019) on the target domain: logits of
    P(LTV > 0), mu and sigma of the lognormal."""

    def __init__(self, hidden, *, t_cat_sizes, t_num, rngs, **_):
        self.enc = _DomainEncoder(t_cat_sizes, t_num, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 3, rngs=rngs)

    def __call__(self, b):
        return self.head(self.enc(b, "t"))


def ziln_loss(logits: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
    """ZILN negative log-likelihood: BCE of ``y > 0`` + lognormal NLL on the positives."""
    p_logit, mu, sigma = logits[:, 0], logits[:, 1], jax.nn.softplus(logits[:, 2]) + 1e-3
    pos = (y > 0).astype(jnp.float32)
    bce = -(pos * jax.nn.log_sigmoid(p_logit) + (1 - pos) * jax.nn.log_sigmoid(-p_logit))
    logy = jnp.log(jnp.where(y > 0, y, 1.0))
    lognorm = logy + jnp.log(sigma) + 0.5 * jnp.log(2 * jnp.pi) + 0.5 * ((logy - mu) / sigma) ** 2
    return jnp.sum(w * (bce + pos * lognorm)) / jnp.sum(w)


def ziln_mean(logits: jax.Array) -> jax.Array:
    """E[LTV] of the ZILN head: ``sigmoid(p) * exp(mu + sigma^2 / 2)``."""
    sigma = jax.nn.softplus(logits[:, 2]) + 1e-3
    return jax.nn.sigmoid(logits[:, 0]) * jnp.exp(logits[:, 1] + 0.5 * sigma**2)


class PTUPCDR(nnx.Module):
    """PTUPCDR (Zhu et al., WSDM 2022) with the LTV encoders: a source model and a target
    model (DeepFM + TCN and a linear LTV head each, pre-trained in their own domain) and a
    meta network that gives every customer a personal bridge.

    The meta network's characteristic encoder attends over the customer's source
    interactions: the frozen source TCN's encodings of the history periods with a source
    purchase (all periods when there is none), weights ``softmax(w2 relu(W1 x))``; its
    decoder (``h -> meta_dim -> h*h``, ReLU) turns the pooled vector into the bridge
    ``W_u: f32[h, h]``. The prediction is the frozen target head on ``e^s W_u``, where ``e^s``
    is the frozen source model's customer embedding: no target-domain input is read, so
    every customer is treated as a cold-start one (as in the paper, where the test users
    have no target interactions).

    Methods: ``source_ltv`` / ``target_ltv`` are the pre-training models, ``__call__`` the
    bridged prediction (gradients reach the meta network only).
    """

    def __init__(self, hidden, *, s_cat_sizes, s_num, t_cat_sizes, t_num, rngs, meta_dim=50, **_):
        self.src = _DomainEncoder(s_cat_sizes, s_num, hidden, rngs=rngs)
        self.tgt = _DomainEncoder(t_cat_sizes, t_num, hidden, rngs=rngs)
        self.src_head = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)
        self.tgt_head = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)
        self.event1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.event2 = nnx.Linear(hidden, 1, use_bias=False, rngs=rngs)
        self.dec1 = nnx.Linear(hidden, meta_dim, rngs=rngs)
        self.dec2 = nnx.Linear(meta_dim, hidden * hidden, rngs=rngs)

    def source_ltv(self, b):
        """f32[N] source-domain LTV of the source model (its pre-training)."""
        return output_relu(self.src_head(self.src(b, "s")))[..., 0]

    def target_ltv(self, b):
        """f32[N] target-domain LTV of the target model (pre-trained on C_a customers)."""
        return output_relu(self.tgt_head(self.tgt(b, "t")))[..., 0]

    def _characteristic(self, b):
        """The frozen source embedding f32[N, h] and the decoder's hidden layer f32[N, meta_dim]
        (the characteristic encoder's pooled vector through ``dec1``)."""
        e_s, seq = jax.lax.stop_gradient(self.src(b, "s", sequence=True))
        active = (b["s_series"] > 0) & (b["s_observed"] > 0)  # [N, L]
        active = active | ~active.any(-1, keepdims=True)
        logits = self.event2(nnx.relu(self.event1(seq)))[..., 0]
        att = jax.nn.softmax(jnp.where(active, logits, -jnp.inf), axis=-1)
        return e_s, nnx.relu(self.dec1(jnp.einsum("nl,nlh->nh", att, seq)))

    def bridge(self, b):
        """The frozen source embedding f32[N, h] and the personal bridge f32[N, h, h]."""
        e_s, r = self._characteristic(b)
        w = self.dec2(r)
        return e_s, w.reshape(w.shape[:-1] + (e_s.shape[-1], e_s.shape[-1]))

    def __call__(self, b):
        """f32[N] the frozen target head on ``e^s W_u``. The bridge is linear in ``dec2`` and
        the head is one linear unit, so the head is folded into ``dec2`` first (``W_u c`` for
        every customer from one ``[meta_dim, h]`` matrix): the same value as through
        :meth:`bridge`, without forming the ``f32[N, h, h]`` bridges."""
        e_s, r = self._characteristic(b)
        head = jax.lax.stop_gradient(self.tgt_head.kernel[...])[:, 0]  # [h]
        bias = jax.lax.stop_gradient(self.tgt_head.bias[...])
        hidden = head.shape[0]
        w_c = self.dec2.kernel[...].reshape(-1, hidden, hidden) @ head  # [meta_dim, h]
        b_c = self.dec2.bias[...].reshape(hidden, hidden) @ head  # [h]
        return output_relu(jnp.sum(e_s * (r @ w_c + b_c), -1) + bias[0])


class DASL(nnx.Module):
    """DASL-style cross-domain model, after DASL (Li et al., KDD 2021), reported as
    "DASL-style": each domain's representation (DeepFM + TCN) attends over the other
    domain's per-period encodings, and two heads predict both domains' LTV, trained jointly;
    the output is the target head.

    Not DASL as published: DASL's dual embedding (user embeddings of the two domains tied by
    a latent orthogonal mapping trained with dual-learning reconstruction losses) is absent,
    and its dual attention is queried by the candidate item, which LTV does not have (the
    domain representation queries here)."""

    def __init__(self, hidden, *, s_cat_sizes, s_num, t_cat_sizes, t_num, rngs, **_):
        self.src = _DomainEncoder(s_cat_sizes, s_num, hidden, rngs=rngs)
        self.tgt = _DomainEncoder(t_cat_sizes, t_num, hidden, rngs=rngs)
        self.q = nnx.Linear(hidden, hidden, rngs=rngs)
        self.kv = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm_t = nnx.LayerNorm(2 * hidden, rngs=rngs)
        self.norm_s = nnx.LayerNorm(2 * hidden, rngs=rngs)
        self.head_t = nnx.Linear(2 * hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)
        self.head_s = nnx.Linear(2 * hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)

    def _attend(self, query, seq):
        k = self.kv(seq)
        att = jax.nn.softmax(jnp.einsum("nh,nlh->nl", self.q(query), k) / np.sqrt(k.shape[-1]))
        return jnp.einsum("nl,nlh->nh", att, k)

    def __call__(self, b):
        e_s, seq_s = self.src(b, "s", sequence=True)
        e_t, seq_t = self.tgt(b, "t", sequence=True)
        y_t = self.head_t(self.norm_t(jnp.concatenate([e_t, self._attend(e_t, seq_s)], -1)))
        y_s = self.head_s(self.norm_s(jnp.concatenate([e_s, self._attend(e_s, seq_t)], -1)))
        return output_relu(jnp.concatenate([y_t, y_s], -1))


NEURAL = {
    "lstm": SeriesLSTM,
    "informer": Informer,
    "tcn": SeriesTCN,
    "ziln": ZILN,
    "dasl": DASL,
}


def _arch(train: CrossDomainData, hidden: int) -> tuple:
    """``(hidden, s_cat_sizes, s_num, t_cat_sizes, t_num, horizon)`` of a baseline on ``train``."""
    sizes = (train.s_cat_sizes, train.s_num.shape[1], train.t_cat_sizes, train.t_num.shape[1])
    return (hidden, *sizes, train.horizon)


def _build(cls: type[nnx.Module], arch: tuple, seed: int, **kwargs) -> nnx.Module:
    """Baseline model ``cls`` for :func:`_arch` ``arch`` (``kwargs``: its own settings)."""
    hidden, s_cat, s_num, t_cat, t_num, horizon = arch
    return cls(hidden, s_cat_sizes=s_cat, s_num=s_num, t_cat_sizes=t_cat, t_num=t_num,
               horizon=horizon, rngs=nnx.Rngs(seed), **kwargs)  # fmt: skip


@functools.lru_cache(maxsize=64)
def _neural_fns(name: str, arch: tuple):
    """(apply, loss_fn, predict_fn) of baseline ``name`` for ``arch`` (built once)."""
    apply, _ = split_params(_build(NEURAL[name], arch, 0))
    if name == "ziln":

        def loss_fn(p, b, lam):
            loss = ziln_loss(apply(p, b), b["t_y"], b["weight"])
            return loss, {"loss": loss}

        return apply, loss_fn, lambda p, b: ziln_mean(apply(p, b))
    if name == "dasl":

        def loss_fn(p, b, lam):
            out = apply(p, b)
            loss = ltv_loss(b["t_y"], out[:, 0], b["weight"]) + ltv_loss(
                b["s_y"], out[:, 1], b["weight"]
            )
            return loss, {"loss": loss}

        return apply, loss_fn, lambda p, b: apply(p, b)[:, 0]

    def loss_fn(p, b, lam):
        loss = ltv_loss(b["t_y"], apply(p, b), b["weight"])
        return loss, {"loss": loss}

    return apply, loss_fn, apply


def neural_baseline(
    name: str,
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    seed: int = 0,
    hidden: int = 128,
    **fit_kwargs,
) -> Predictor:
    """Trains neural baseline ``name`` (one of :data:`NEURAL`) with Adam and early stopping on
    the validation MAE (:func:`dmeta.ltv.train.fit`; ``fit_kwargs`` are its lr, batch_size,
    max_epochs, patience, drop_epoch, drop_factor, shard)."""
    arch = _arch(train, hidden)
    _, loss_fn, predict_fn = _neural_fns(name, arch)
    _, params = split_params(_build(NEURAL[name], arch, seed))
    scale_s = float(max(train.s_y.mean(), 1e-6))
    scale_t = float(max(train.t_y.mean(), 1e-6))
    tr, va = model_batch(train, scale_s, scale_t), model_batch(val, scale_s, scale_t)
    desc = f"{name} hidden={hidden}"
    res = fit(loss_fn, predict_fn, params, tr, va, label="t_y", desc=desc, seed=seed, **fit_kwargs)
    best = res.best_state.params

    def predict_ltv(data: CrossDomainData) -> np.ndarray:
        pred = predict(predict_fn, best, model_batch(data, scale_s, scale_t))
        return (pred * scale_t).astype(np.float32)

    return predict_ltv


PTUPCDR_STAGES = (  # (name, method of PTUPCDR, label, customers trained on, validated on)
    ("source", "source_ltv", "s_y", "all", "all"),
    ("target", "target_ltv", "t_y", "C_a", "C_a"),
    ("meta", "__call__", "t_y", "C_a", "all"),
)


@functools.lru_cache(maxsize=16)
def _ptupcdr_fns(arch: tuple, meta_dim: int) -> list[tuple[Callable, Callable]]:
    """(loss_fn, predict_fn) of each of :data:`PTUPCDR_STAGES` for ``arch`` (built once)."""
    model = _build(PTUPCDR, arch, 0, meta_dim=meta_dim)
    fns = []
    for _, method, label, _, _ in PTUPCDR_STAGES:
        apply, _ = split_params(model, method)

        def loss_fn(p, b, lam, apply=apply, label=label):
            loss = ltv_loss(b[label], apply(p, b), b["weight"])
            return loss, {"loss": loss}

        fns.append((loss_fn, apply))
    return fns


def ptupcdr(
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    seed: int = 0,
    hidden: int = 128,
    meta_dim: int = 50,
    **fit_kwargs,
) -> Predictor:
    """Trains :class:`PTUPCDR` in the paper's three steps, each with Adam and early stopping
    on its validation MAE (:func:`dmeta.ltv.train.fit`): the source model on every training
    customer's source LTV; the target model on the C_a customers (overlapping users with
    target behaviour); the meta network on the C_a customers' target LTV through the frozen
    models, early-stopped on every validation customer (the bridged prediction reads no
    target input, so C_na and C_a customers are alike to it). ``fit_kwargs`` as in
    :func:`neural_baseline`.

    Raises:
      ValueError: no training customer has target history.
    """
    paired = train.take(~train.sparse)
    if paired.n == 0:
        raise ValueError("PTUPCDR needs training customers with target history (C_a)")
    arch = _arch(train, hidden)
    _, params = split_params(_build(PTUPCDR, arch, seed, meta_dim=meta_dim))
    scale_s = float(max(train.s_y.mean(), 1e-6))
    scale_t = float(max(paired.t_y.mean(), 1e-6))
    val_paired = val.take(~val.sparse) if (~val.sparse).any() else val
    customers = {"all": (train, val), "C_a": (paired, val_paired)}
    fns = _ptupcdr_fns(arch, meta_dim)
    for i, (stage, _, label, on_train, on_val) in enumerate(PTUPCDR_STAGES):
        loss_fn, predict_fn = fns[i]
        tr = model_batch(customers[on_train][0], scale_s, scale_t)
        va = model_batch(customers[on_val][1], scale_s, scale_t)
        desc = f"ptupcdr hidden={hidden} meta={meta_dim} {stage}"
        res = fit(loss_fn, predict_fn, params, tr, va, label=label, desc=desc, seed=seed + i,
                  **fit_kwargs)  # fmt: skip
        params = res.best_state.params

    def predict_ltv(data: CrossDomainData) -> np.ndarray:
        pred = predict(predict_fn, params, model_batch(data, scale_s, scale_t))
        return (pred * scale_t).astype(np.float32)

    return predict_ltv


CLASSICAL = {"ARIMA": arima, "BG/NBD+GG": bgnbd_gamma_gamma, "XGBoost-2stage": two_stage_xgboost}
NEURAL_NAMES = {
    "LSTM": "lstm",
    "Informer": "informer",
    "TCN": "tcn",
    "ZILN": "ziln",
    "DASL-style": "dasl",
}
