"""CAMN (Zhou et al., CIKM 2022): multi-interest refinement by collaborative attributes modeling.

Section 2 of the paper, with the open points closed as docs/models.md "CAMN" records:

- Input (section 2): the click sequence; each of its ``l`` positions carries ``k`` attributes (the
  spec's item fields, ``item_id`` first), each embedded in ``d`` dimensions. ``X_r`` [l, d] is the
  r-th attribute sequence, ``X`` [l, k*d] their concatenation.
- Collaborative attribute routing (eq. 1-3): ``P = Softmax(keepTopq(LayerNorm(X) W_h, q))``, one
  score per position and attribute; only the top ``q`` attributes of a position survive.
- Modified Transformer (eq. 4-6), one head per attribute r with ``X_r`` as its only input:
  ``A_r = Softmax(P[:, r] (.) X_r W_r^Q (X_r W_r^K)^T / sqrt(d))``, ``X^_r = A_r X_r W_r^V``,
  ``X~_r = max(0, X^_r W_1 + b_1) W_2 + b_2`` (with a residual around each step by default: point 6).
- Interest extractor (DMIN): ``X~_r`` is pooled by target attention with the target item's
  attribute r as query, one interest per attribute; the prediction MLP sees
  [k interests, target item embedding, user fields].
- Diversity loss (eq. 7): ``L_d = 1/k^2 sum_i sum_j ||A_i (.) A_j||_F``; ``L = L_p + alpha L_d`` (eq. 8).

Deviations from the paper, and why:

1. Eq. 4 writes ``P (.) (X_r W^Q (X_r W^K)^T / sqrt(d))`` with P of shape l x k and the logits
   l x l, which do not match. As decided (docs/models.md "CAMN"), the logits of head r are scaled on the **key
   side**: logit[t, j] is multiplied by ``P[j, r]``, the score of key position j for attribute r
   (so a position whose attribute r the router deems influential is attended to more sharply).
2. Padding (not discussed in the paper): pad positions are excluded everywhere. The router gives
   them P = 0 (a masked softmax over nothing), they are masked out as keys of eq. 4 and in the
   interest extractor, and their (meaningless) query rows of ``A_r`` are dropped from eq. 7. The
   diversity loss is averaged over the examples that have at least one click, so an empty history
   neither contributes nor dilutes the term.
3. Eq. 7's ``||.||`` is read as the Frobenius norm (docs/models.md) and the double sum runs over all
   k^2 ordered pairs **including i = j**, as eq. 7 (both sums from 1 to k, divided by k^2) and
   docs/models.md ("mean over all ordered pairs") state. The diagonal terms ``||A_i (.) A_i||_F``
   penalise peaked attention (the paper's "attention smoothing"); the off-diagonal terms push the
   heads apart. The norm uses a zero-safe square root so an all-zero product has gradient 0, not NaN.
4. Time gaps (docs/models.md "Shared input contract"): the bucketized gap embedding of a position
   is added to each of its attribute embeddings, so X (router input) and X_r (attention input)
   carry recency; the paper has no time information.
5. The sequence is truncated to the most recent ``sequence_length`` clicks (default 20, the paper's
   maximum length; docs/models.md "CAMN"); ``None`` uses every position the data provide.
6. The FFN of eq. 6 is shared by the k heads (``W_1``, ``W_2`` carry no r index in the paper).
   Eq. 5-6 as written have no residual connection; standard Transformer blocks, and DMIN's, have
   one around the attention and one around the FFN. ``residual=True`` (the default) adds both:
   ``H_r = X_r + X^_r``, ``X~_r = H_r + max(0, H_r W_1 + b_1) W_2 + b_2``; ``residual=False`` is
   eq. 5-6 exactly. Why (measured, point 10's diagnostics): without the residual, eq. 4's rows
   average over many keys, so every position of X~ is close to one vector and the interest
   extractor has nothing to choose between. On the known-answer logs (``benchmarks/quality.py
   --synthetic``, seed 0) X's positions carried 0.43-0.47 of its energy as spread across
   positions, X~'s only 0.02-0.04, and the extractor's entropy stayed at 0.985; on ml1m-seq it
   stayed at 0.9994. Layer normalisation is still left out (the paper has none; the extractor
   normalises its own keys).
7. Interest extractor (the paper only says "following DMIN"): one DIN activation unit
   MLP([q, k, q-k, q*k]) per attribute with a softmax over the real positions, as in DMIN's
   reference code (one target attention per head); DMIN's extra position embedding is replaced by
   the gap embedding of point 4. Sigmoid units ``attention_units`` (64, 32) as in the DIN baseline.
8. Prediction MLP inputs follow docs/models.md ([k interests, target item embedding, user fields]); the
   paper lists only the interests and the target item. Context fields (hour, weekday) are not used,
   as neither the paper nor docs/models.md lists them.
9. Softmaxes of the router and of eq. 4 are computed in float32 (also under mixed precision).
10. Pre-LN (docs/models.md "Attention numerics", v2): the input of ``W_r^Q`` and ``W_r^K`` is
   ``LayerNorm(X_r)`` (per head gain and bias), not ``X_r``. Without it the embeddings' init scale
   (normal(0, 1e-4)) gives logits near 0 and A_r stayed uniform for the whole run in v1 (its
   diversity loss equalled the uniform value E[1/min(n, 20)]). The values keep ``X_r``.
   The mean normalised entropy of A_r (real query rows) and of the interest extractor's weights
   are logged as the diagnostics ``attention_entropy`` and ``interest_entropy``; ``input_spread``
   and ``refined_spread`` (``layers.position_spread``: the share of X's and of X~'s energy that
   varies across positions) show what the extractor has to choose between: with no residual
   (point 6), a near-uniform A_r makes every row of X^ = A_r X_r W^V close to one average, and an
   extractor over keys that are all alike stays near uniform whatever it learns.

Ablations (section 3.5): ``router=False`` is CAMN-loss (no routing module; P = 1, no key scaling,
``W_h`` is not created); ``diversity_loss=False`` is CAMN-route (eq. 7 neither computed nor declared).
``attention="mean"`` replaces eq. 4's softmax by equal weights over the real keys (a check that
the attention learns something mean pooling cannot).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import tensorflow as tf
import tf_keras

from contract.model_params import CAMNParams
from models.base import CTRModel, ModelOutput
from models.layers import (
    LogitHead,
    PreLayerNorm,
    TargetAttention,
    flatten_fields,
    masked_softmax,
    normalized_entropy,
    position_spread,
    pre_layer_norm,
)

FEEDBACK = "click"


def default_q(num_attributes: int) -> int:
    """The default of keepTopq (docs/models.md "CAMN"): q = ceil(k / 2)."""
    return int(math.ceil(num_attributes / 2))


# ---- equations as pure functions ------------------------------------------------------------------
def keep_top_q(scores: tf.Tensor, q: int) -> tf.Tensor:
    """Eq. 3: bool mask, True at exactly the ``q`` largest entries of the last axis (ties: lowest index)."""
    _, indices = tf.math.top_k(scores, k=q, sorted=False)
    return tf.reduce_sum(tf.one_hot(indices, tf.shape(scores)[-1], dtype=tf.int32), axis=-2) > 0


def collaborative_scores(scores: tf.Tensor, q: int, mask: tf.Tensor) -> tf.Tensor:
    """Eq. 2: ``P = Softmax(keepTopq(scores, q))`` over the k attributes, in float32.

    scores [B, l, k] (``X~ W_h``), mask [B, l]. Dropped entries (the -inf of eq. 3) get exactly 0,
    so only the top q have non-zero derivatives; pad positions get P = 0 in every attribute.
    """
    keep = tf.logical_and(keep_top_q(scores, q), mask[..., tf.newaxis])
    return masked_softmax(tf.cast(scores, tf.float32), keep)


def diversity_loss(attention: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Eq. 7: ``L_d = 1/k^2 sum_{i,j} ||A_i (.) A_j||_F``, averaged over examples with a click.

    attention [B, k, l, l] (the A_r of eq. 4), mask [B, l]. Rows of pad query positions are
    dropped (pad key columns are already 0). All k^2 ordered pairs are counted, i = j included.
    """
    mask = tf.cast(mask, tf.float32)
    squared = tf.square(tf.cast(attention, tf.float32)) * mask[:, tf.newaxis, :, tf.newaxis]
    # ||A_i (.) A_j||_F^2 = sum_{t,s} A_i[t,s]^2 A_j[t,s]^2: the Gram matrix of the squared heads
    gram = tf.einsum("bits,bjts->bij", squared, squared)
    positive = gram > 0
    norms = tf.where(positive, tf.sqrt(tf.where(positive, gram, tf.ones_like(gram))), tf.zeros_like(gram))
    per_example = tf.reduce_mean(norms, axis=[1, 2])  # 1/k^2 sum_{i,j}
    has_clicks = tf.cast(tf.reduce_any(mask > 0, axis=1), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example * has_clicks), tf.reduce_sum(has_clicks))


# ---- layers ---------------------------------------------------------------------------------------
class CollaborativeAttributeRouter(tf_keras.layers.Layer):
    """Section 2.1, eq. 1-3: X [B, l, k, d], mask [B, l] -> P [B, l, k] (float32)."""

    def __init__(self, num_attributes: int, q: int, name: str = "router"):
        super().__init__(name=name)
        self.q = q
        # eq. 1; with PRE_LN_EPSILON: Keras' default epsilon 1e-3 would swamp embeddings at their init scale
        self.layer_norm = PreLayerNorm(name="router_layer_norm")
        self.W_h = tf_keras.layers.Dense(num_attributes, use_bias=False, name="W_h")  # kd -> k

    def call(self, x, mask):
        shape = tf.shape(x)
        X = tf.reshape(x, [shape[0], shape[1], x.shape[2] * x.shape[3]])  # [B, l, k*d]
        X_tilde = self.layer_norm(X)  # eq. 1
        return collaborative_scores(self.W_h(X_tilde), self.q, mask)  # eq. 2-3


class AttributeAttention(tf_keras.layers.Layer):
    """Section 2.2, eq. 4-5: one attention head per attribute r, fed only with ``X_r``.

    x [B, l, k, d], mask [B, l], P [B, l, k] or None (no key scaling). Returns
    (X^ [B, l, k, d], A [B, k, l, l] float32). The k heads are computed together with
    per-attribute weights ``W_Q, W_K, W_V`` [k, d, d] (``W_Q[r]`` is the paper's ``W_r^Q``).
    The input to ``W_Q`` and ``W_K`` is layer-normalised per attribute first (pre-LN, docs/models.md
    "Attention numerics": ``pre_layer_norm`` in float32 with a gain and bias per head, the gain
    cast to float32 under mixed precision too); ``W_V`` sees ``X_r`` as it is.
    ``uniform=True`` replaces the softmax of eq. 4 by equal weights over the real keys (ablation).
    """

    def __init__(self, num_attributes: int, dim: int, uniform: bool = False, name: str = "attribute_attention"):
        super().__init__(name=name)
        self.num_attributes, self.dim, self.uniform = num_attributes, dim, uniform

    def build(self, input_shape):
        shape = (self.num_attributes, self.dim, self.dim)
        # Glorot-uniform of each d x d head (Keras' GlorotUniform would count the k heads as fan)
        init = lambda: tf_keras.initializers.VarianceScaling(self.num_attributes, "fan_avg", "uniform")  # noqa: E731
        self.W_V = self.add_weight(name="W_V", shape=shape, initializer=init())
        if not self.uniform:  # the logits' weights
            self.W_Q = self.add_weight(name="W_Q", shape=shape, initializer=init())
            self.W_K = self.add_weight(name="W_K", shape=shape, initializer=init())
            self.ln_gain = self.add_weight(name="pre_ln_gain", shape=(self.num_attributes, self.dim), initializer="ones")
            self.ln_bias = self.add_weight(name="pre_ln_bias", shape=(self.num_attributes, self.dim), initializer="zeros")
        super().build(input_shape)

    def logits(self, x, P=None):
        """Eq. 4 inside the softmax: [B, k, l(query), l(key)], float32."""
        normed = pre_layer_norm(x, self.ln_gain, self.ln_bias)  # LN_r(X_r): head r's gain and bias
        Q = tf.einsum("blrd,rde->brle", normed, self.W_Q)  # LN(X_r) W_r^Q, heads first: [B, k, l, d]
        K = tf.einsum("blrd,rde->brle", normed, self.W_K)
        logits = tf.cast(tf.einsum("brte,brse->brts", Q, K), tf.float32) / math.sqrt(self.dim)
        if P is not None:  # key side: logit[r, t, j] * P[j, r]
            logits = logits * tf.transpose(tf.cast(P, tf.float32), [0, 2, 1])[:, :, tf.newaxis, :]
        return logits

    def call(self, x, mask, P=None):
        V = tf.einsum("blrd,rde->brle", x, self.W_V)
        if self.uniform:
            steps = tf.shape(x)[1]
            logits = tf.zeros(tf.stack([tf.shape(x)[0], self.num_attributes, steps, steps]), tf.float32)
        else:
            logits = self.logits(x, P)
        A = masked_softmax(logits, mask[:, tf.newaxis, tf.newaxis, :])  # [B, k, l(query), l(key)]
        X_hat = tf.einsum("brts,brse->btre", tf.cast(A, V.dtype), V)  # eq. 5
        return X_hat, A


class CAMN(CTRModel):
    """CAMN; see the module docstring for the equations and every deviation from the paper."""

    Params = CAMNParams

    def __init__(self, spec, vocab_sizes, params: CAMNParams, name: str = "camn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        k, d = len(spec.item_fields), self.embedding_dim
        self.num_attributes = k
        self.q = params.q if params.q is not None else default_q(k)
        if not 1 <= self.q <= k:
            raise ValueError(f"keepTopq needs 1 <= q <= k = {k} item attributes, got q = {self.q}")
        # the router only scales eq. 4's logits: mean pooling has none to scale
        self.router = CollaborativeAttributeRouter(k, self.q) if params.router and params.attention == "dot" else None
        self.attention = AttributeAttention(k, d, uniform=params.attention == "mean")
        # eq. 6, shared by the k heads
        self.W_1 = tf_keras.layers.Dense(d, activation="relu", name="W_1")
        self.W_2 = tf_keras.layers.Dense(d, name="W_2")
        self.interest_extractors = [
            TargetAttention(params.attention_units, normalization="softmax", pre_norm=True, name=f"interest_extractor_{r}")
            for r in range(k)
        ]
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def loss_weights(self) -> Dict[str, float]:
        return {"diversity": self.params.alpha} if self.params.diversity_loss else {}

    def diagnostic_names(self) -> Tuple[str, ...]:
        return ("attention_entropy", "interest_entropy", "input_spread", "refined_spread")

    def click_sequence(self, features):
        """(X [B, l, k, d], mask [B, l]): the most recent ``sequence_length`` clicks, gap added."""
        length = self.params.sequence_length
        if length is not None:
            features = dict(features)
            for name in self.spec.transformed_sequence_names(FEEDBACK):
                features[name] = features[name][:, -length:]
        return self.embeddings.sequence(features, FEEDBACK)

    def refine(self, x, mask):
        """Eq. 1-6: (X~ [B, l, k, d], A [B, k, l, l], P [B, l, k] or None)."""
        P = self.router(x, mask) if self.router is not None else None
        X_hat, A = self.attention(x, mask, P)
        if not self.params.residual:
            return self.W_2(self.W_1(X_hat)), A, P  # eq. 6 of eq. 5
        H = x + X_hat  # residual around eq. 5
        return H + self.W_2(self.W_1(H)), A, P  # ... and around eq. 6

    def forward(self, features, training=False, losses=True):
        emb = self.embeddings
        x, mask = self.click_sequence(features)
        X_tilde, A, _ = self.refine(x, mask)
        target = emb.target(features)  # [B, k, d]
        pooled = [
            extractor(target[:, r], X_tilde[:, :, r], mask, training=training)
            for r, extractor in enumerate(self.interest_extractors)
        ]
        interests = [interest for interest, _ in pooled]
        flat = tf.concat(interests + [emb.item_vectors(target), flatten_fields(emb.user(features))], axis=-1)
        logit = self.head(flat, training=training)
        if not losses:
            return ModelOutput(logit=logit)
        aux = {"diversity": diversity_loss(A, mask)} if self.params.diversity_loss else {}
        real_rows = tf.logical_and(mask[:, tf.newaxis, :, tf.newaxis], mask[:, tf.newaxis, tf.newaxis, :])
        diagnostics = {
            "attention_entropy": normalized_entropy(A, real_rows),  # eq. 4, real query rows only
            "interest_entropy": normalized_entropy(tf.stack([w for _, w in pooled], axis=1), mask[:, tf.newaxis, :]),
            # what the interest extractor's keys have to choose between: X (the input) and X~ (eq. 6)
            "input_spread": position_spread(x, mask),
            "refined_spread": position_spread(X_tilde, mask),
        }
        return ModelOutput(logit=logit, aux_losses=aux, diagnostics=diagnostics)
