"""FADIDN: Fine-grained Attribute Decoupling and Interest Denoising Network (Li, Zhu, Zhu, 2025).

Paper: /work/shared/papers/FADIDN.txt, section 2; open points closed as docs/models.md "FADIDN" records.
The eq. 1 gate lives in ``models.fadidn_gate``, the section 2.4 pairs and InfoNCE in
``models.fadidn_contrastive``; this module has eq. 2-4, the model and the deviations below.

For each feedback type f in {click, unclick} (the paper's C and V):

* 2.2  ``E_cp^n = E_c^n + E_gap``: the attribute-n sequence plus the time-gap embedding
  (``FeatureEmbeddings.sequence``), [B, T, N, E] for all n at once, zero at pad positions.
* eq. 1  gate: ``w^n = softmax_n(LeakyReLU(W_l g_{l-1} + b_l))`` with ``g_0 = E_cp^n`` (hidden 256,
  output E), the softmax taken across the N attributes per position and dimension.
* eq. 2  profile attention per attribute n, h heads: ``Q = E_u W_Q`` (the M+1 user fields),
  ``K = (E_cp^n * w^n) W_K``, ``V = E_cp^n W_V``, ``softmax(Q K^T / sqrt(d_k)) V`` over real positions.
* eq. 3  ``o^n = Concat(head_1..head_h) W_F``: [M+1, E] per attribute.
* eq. 4  target attention, one head per attribute n: ``Q* = e_tar^n W_Q*^n``, ``K* = o^n W_K*^n``,
  ``V* = o^n W_V*^n``; ``f = FFN(Concat(head_1..head_N) W_s)``, FFN (256, 128): ``f_c`` and ``f_v``.

Section 2.4 (contrastive interest optimisation, on ``f_c``): the anchor is ``f_c`` projected to the
item width N*E (items are their N attribute embeddings concatenated); positives are the top-k click
items of the user with ``sim > eta``; hard negatives the top-q unclick items of the user most
similar to the anchor; random negatives other users' unclick items of the batch, K in total;
``L_cl`` is InfoNCE with temperature tau (eq. 5) and ``L = L_ce + lambda_cl * L_cl`` (eq. 7).
Prediction: MLP (256, 128) over [E_u, e_tar, f_c, f_v].

Diagnostics (docs/models.md "Attention numerics", logged on the validation split as ``val_diag_<name>``):
``<f>_profile_entropy``, the mean normalised entropy of eq. 2 over every (attribute, head, user-field
row) with at least two real positions, and ``<f>_target_entropy``, that of eq. 4 over its M+1
user-field rows (declared only when M+1 >= 2: a single row has no entropy), for f in click, unclick.
The means run over every row, the user-field rows that no label depends on included, so a module
that has singled out its positions in only some rows shows a value between that of those rows and 1.

Speed (docs/models.md "FADIDN"): the gate's MLP is evaluated once per distinct
(attribute n, attribute id, gap bucket) of the batch and gathered back (``AttributeGate``); the
softmax across the N attributes runs after the gather, per position, so the result is the
per-position eq. 1 exactly (see ``AttributeGate`` for why this granularity).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from contract.features import USER_ID
from contract.model_params import FADIDNParams
from models.base import CTRModel, ModelOutput, probability
from models.fadidn_contrastive import hard_sample_pairs, info_nce, sample_random_negatives
from models.fadidn_gate import AttributeGate, gate_ids
from models.layers import (
    MLP,
    LogitHead,
    MultiHeadAttention,
    PreLayerNorm,
    cosine_similarity,
    flatten_fields,
    normalized_entropy,
)

FEEDBACK = ("click", "unclick")  # the two sequences FADIDN models (C and V in the paper)


# ---- layers ------------------------------------------------------------------------------------
class AttributeTargetAttention(tf_keras.layers.Layer):
    """Eq. 4's multi-head target attention: head n attends from ``e_tar^n`` over the rows of ``o^n``.

    Each head n has its own ``W_Q*^n, W_K*^n, W_V*^n`` (E x E); logits scaled by sqrt(E). The inputs
    to W_Q* and W_K* are layer-normalised first (pre-LN, docs/models.md "Attention numerics", the shared
    ``PreLayerNorm`` of ``MultiHeadAttention``; one LayerNorm per side shared by the heads:
    each head's own projection absorbs the gain, so per-head norms would add nothing).
    e_tar [B, N, E], o [B, N, R, E] (R = M+1 user-field rows, none padded) ->
    (heads [B, N, E], weights [B, N, R]).
    """

    def __init__(self, num_attributes: int, dim: int, name: Optional[str] = None):
        super().__init__(name=name)
        self.num_attributes, self.dim = num_attributes, dim
        self.norm_q = PreLayerNorm(name="pre_ln_q")
        self.norm_k = PreLayerNorm(name="pre_ln_k")

    def build(self, input_shape):  # in build, so the weights carry the layer's name scope
        shape = (self.num_attributes, self.dim, self.dim)
        self.W_Q_star = self.add_weight(name="W_Q_star", shape=shape, initializer="glorot_uniform")
        self.W_K_star = self.add_weight(name="W_K_star", shape=shape, initializer="glorot_uniform")
        self.W_V_star = self.add_weight(name="W_V_star", shape=shape, initializer="glorot_uniform")
        super().build(input_shape)

    def call(self, e_tar, o):
        q = tf.einsum("bne,ned->bnd", self.norm_q(e_tar), self.W_Q_star)
        k = tf.einsum("bnre,ned->bnrd", self.norm_k(o), self.W_K_star)
        v = tf.einsum("bnre,ned->bnrd", o, self.W_V_star)
        logits = tf.einsum("bnd,bnrd->bnr", q, k) / tf.math.sqrt(tf.cast(self.dim, q.dtype))
        weights = tf.nn.softmax(logits, axis=-1)
        return tf.einsum("bnr,bnrd->bnd", weights, v), weights


class FineGrainedInterest(tf_keras.layers.Layer):
    """Section 2.3 for one feedback sequence: gate (eq. 1), profile attention (eq. 2-3), target
    attention + W_s + FFN (eq. 4).

    Returns (f [B, ffn_units[-1]], profile weights [B, N, H, M+1, T], target weights [B, N, M+1]);
    with ``attention="mean"`` the profile weights are the uniform ones, [B, N, 1, 1, T].
    """

    def __init__(
        self,
        num_attributes: int,
        dim: int,
        num_heads: int,
        gate_units: Optional[Sequence[int]],
        ffn_units: Sequence[int],
        attention: str = "dot",
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self.attention = attention
        self.gate = AttributeGate(gate_units, dim, name="attribute_gate") if gate_units is not None else None
        if attention == "dot":
            # W_Q, W_K, W_V of eq. 2 (shared by the attributes, pre-LN on the W_Q/W_K inputs), d_k = E / h
            self.profile_attention = MultiHeadAttention(num_heads, dim // num_heads, name="profile_attention")
        else:  # the mean-pooling ablation keeps eq. 2's values, V = E_cp^n W_V
            self.W_V = tf_keras.layers.Dense(dim, use_bias=False, name="W_V")
        self.W_F = tf_keras.layers.Dense(dim, use_bias=False, name="W_F")  # eq. 3
        self.target_attention = AttributeTargetAttention(num_attributes, dim, name="target_attention")
        self.W_s = tf_keras.layers.Dense(num_attributes * dim, use_bias=False, name="W_s")
        self.ffn = MLP(ffn_units, name="ffn")

    def call(self, E_u, E_cp, mask, e_tar, ids=None, training=False):
        """``ids`` [B, T, N]: the ``gate_ids`` of E_cp (needed with the gate only)."""
        o, profile_weights = self.profile(E_u, E_cp, mask, ids)
        f, target_weights = self.target(o, e_tar, training=training)
        return f, profile_weights, target_weights

    def profile(self, E_u, E_cp, mask, ids=None):
        """Eq. 1-3, the user side: (o^n [B, N, M+1, E], attention weights); no target item involved."""
        batch, steps = tf.shape(E_cp)[0], tf.shape(E_cp)[1]
        num_attributes, dim = E_cp.shape[2], E_cp.shape[3]
        rows = E_u.shape[1]  # M+1 user fields

        # eq. 2-3 for every attribute at once: fold the N attributes into the batch
        def fold(x):  # [B, T, N, E] -> [B*N, T, E]
            return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [batch * num_attributes, steps, dim])

        key_mask = tf.reshape(tf.tile(mask[:, tf.newaxis, :], [1, num_attributes, 1]), [-1, steps])
        if self.attention == "mean":
            real = tf.cast(key_mask, E_cp.dtype)
            weights = tf.math.divide_no_nan(real, tf.reduce_sum(real, axis=1, keepdims=True))  # [B*N, T]
            pooled = tf.einsum("bt,bte->be", weights, self.W_V(fold(E_cp)))
            heads = tf.tile(pooled[:, tf.newaxis, :], [1, rows, 1])  # the same for every user-field row
            weights = weights[:, tf.newaxis, tf.newaxis, :]
        else:
            keys = E_cp
            if self.gate is not None:  # eq. 1: K-side input E_cp^n (.) w^n
                if ids is None:
                    raise ValueError("the eq. 1 gate needs the gate_ids of E_cp")
                keys = E_cp * self.gate(E_cp, ids)
            queries = tf.reshape(tf.tile(E_u[:, tf.newaxis], [1, num_attributes, 1, 1]), [-1, rows, dim])
            heads, weights = self.profile_attention(queries, fold(keys), fold(E_cp), key_mask)
        o = tf.reshape(self.W_F(heads), [batch, num_attributes, rows, dim])
        weights = tf.reshape(weights, tf.concat([[batch, num_attributes], tf.shape(weights)[1:]], axis=0))
        return o, weights

    def target(self, o, e_tar, training=False):
        """Eq. 4: target attention over o^n, W_s and the FFN: (f [B, ffn_units[-1]], weights [B, N, M+1])."""
        target_heads, weights = self.target_attention(e_tar, o)  # [B, N, E]
        concat = tf.reshape(target_heads, [-1, target_heads.shape[1] * target_heads.shape[2]])
        return self.ffn(self.W_s(concat), training=training), weights


class FADIDN(CTRModel):
    """FADIDN (see the module docstring for the equations and where they are).

    Deviations from the paper (docs/models.md records what was decided where the paper is silent or ambiguous):

    * Queries of the profile attention are the M+1 user-field embeddings only (docs/models.md); the
      paper's phrase "all features except the user's historical behavior" is not followed. The
      prediction MLP sees [E_u, e_tar, f_c, f_v] (docs/models.md); hour/weekday only when ``context``.
    * Gate (eq. 1): one gate MLP per feedback type, shared by the attributes (W_l has no n); the
      softmax runs across the N attributes per position and dimension (docs/models.md; the paper does
      not name the axis). LeakyReLU slope 0.01 (PyTorch's default; the paper does not give it).
      Computed once per distinct (attribute, id, gap bucket) of the batch: the same values as per
      position (docs/models.md "FADIDN"), not a change of the model.
    * Pre-LN (docs/models.md "Attention numerics"): the inputs to W_Q, W_K of eq. 2 (E_u and the
      gated E_cp^n) and to W_Q*, W_K* of eq. 4 (e_tar^n and o^n) are layer-normalised; values are
      not. The paper has no normalisation there; without it, embeddings at their init scale
      (normal(0, 1e-4)) give logits near 0 and a uniform softmax.
    * Profile attention: W_Q, W_K, W_V, W_F shared by the attributes, without bias; d_k = E / h.
      h = 2 (the paper's settings and docs/models.md; its Table 4 peaks at 4). ``attention="mean"``
      (an ablation, not in the paper) replaces eq. 2's softmax by masked mean pooling.
    * Target attention (eq. 4): "multi-head" read as one head per attribute n, each with its own
      E x E projections W_Q*^n, W_K*^n, W_V*^n (the paper does not say whether they are shared),
      scaled by sqrt(E). W_s maps N*E -> N*E. The "point-wise FFN" is Dense(256)-ReLU-Dense(128)-ReLU
      on the one vector, without residual or LayerNorm (its width changes, so no residual fits).
    * Contrastive module (2.4): ``f_c`` (width 128) cannot be compared with items (width N*E) as the
      paper writes, so a linear ``anchor_projection`` maps it to N*E (docs/models.md). Items are their N
      attribute embeddings concatenated WITHOUT the time-gap embedding (an item, not an event).
      Positives need cosine strictly > eta; hard negatives have no threshold. Pads are never
      selected. Random negatives (K - q of them, docs/models.md: K = 64, the paper's 256-1024 is a
      tuning range) are drawn uniformly with replacement from the real unclick events of the batch;
      draws landing on the same user_id are dropped, so a user has up to K negatives (a drawn item
      that happens to be one of the user's own clicks is not filtered: random in-batch noise). In training
      the draws are random; with ``training=False`` they use a fixed stateless seed, so evaluation
      losses are deterministic. ``L_cl`` averages over all valid (anchor, positive) pairs of the
      batch (the paper's 1/N over pairs); a user without a valid positive contributes nothing and a
      batch without any gives 0. Pair selection (top-k/top-q) is by current similarity; gradients
      flow through the selected similarities into the anchor side and, unless ``detach_items``
      (not in the paper; docs/models.md "FADIDN"), into the item embeddings.
    * The contrastive term is computed on f_c only (the paper and docs/models.md); f_v has none.
    * lambda_cl = 0.01, tau = 0.2, item side not detached: the choice by validation AUC on ml1m-seq
      seed 0 that the design asks for (docs/models.md "FADIDN"), one factor at a time from the v1
      defaults (0.2, 0.2, False). Best validation AUC: lambda 0.01 0.7619, 0.05 0.7607, 0.2 0.7577;
      tau 0.5 0.7589, 0.1 0.7544; detached 0.7516 (benchmarks/results/quality.md gives the commands).
    """

    Params = FADIDNParams

    def __init__(self, spec, vocab_sizes, params: FADIDNParams, name: str = "fadidn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        missing = [f for f in FEEDBACK if f not in spec.feedback_types]
        if missing:
            raise ValueError(f"FADIDN needs the feedback sequences {FEEDBACK}; the spec lacks {missing}")
        dim, num_attributes = self.embedding_dim, len(spec.item_fields)
        if dim % params.num_heads:
            raise ValueError(f"num_heads={params.num_heads} must divide the embedding dimension {dim}")
        self.interest = {
            feedback: FineGrainedInterest(
                num_attributes,
                dim,
                params.num_heads,
                params.gate_units if params.gate else None,
                params.ffn_units,
                attention=params.attention,
                name=f"{feedback}_interest",
            )
            for feedback in FEEDBACK
        }
        if params.contrastive:
            self.anchor_projection = tf_keras.layers.Dense(num_attributes * dim, name="anchor_projection")
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def loss_weights(self) -> Dict[str, float]:
        return {"contrastive": self.params.lambda_cl} if self.params.contrastive else {}

    def diagnostic_names(self) -> Tuple[str, ...]:
        names = []
        for feedback in FEEDBACK:
            names.append(f"{feedback}_profile_entropy")
            if len(self.spec.user_fields) > 1:  # eq. 4 attends over the M+1 user-field rows
                names.append(f"{feedback}_target_entropy")
        return tuple(names)

    def forward(self, features, training=False, losses=True):
        emb = self.embeddings
        E_u, e_tar = emb.user(features), emb.target(features)  # [B, M+1, E], [B, N, E]
        interests, masks, diagnostics = {}, {}, {}
        declared = self.diagnostic_names() if losses else ()
        for feedback in FEEDBACK:
            E_cp, mask = emb.sequence(features, feedback)  # 2.2: E_c^n + E_gap
            interests[feedback], profile_weights, target_weights = self.interest[feedback](
                E_u, E_cp, mask, e_tar, ids=self._gate_ids(features, feedback, mask), training=training
            )
            masks[feedback] = mask
            if f"{feedback}_profile_entropy" in declared:
                diagnostics[f"{feedback}_profile_entropy"] = normalized_entropy(
                    profile_weights, mask[:, tf.newaxis, tf.newaxis, tf.newaxis, :]
                )
            if f"{feedback}_target_entropy" in declared:  # every one of the M+1 rows is a key
                diagnostics[f"{feedback}_target_entropy"] = normalized_entropy(
                    target_weights, tf.ones_like(target_weights, dtype=tf.bool)
                )
        logit = self._logit(E_u, e_tar, interests, emb.context(features), training)
        aux_losses = {}
        if self.params.contrastive and losses:
            aux_losses["contrastive"] = self.contrastive_loss(features, interests["click"], masks, training)
        return ModelOutput(logit=logit, aux_losses=aux_losses, diagnostics=diagnostics)

    def _gate_ids(self, features, feedback, mask) -> Optional[tf.Tensor]:
        """The ``gate_ids`` of a feedback sequence; None without the gate."""
        if not self.params.gate:
            return None
        ids = tf.stack([features[self.spec.history(feedback, f)] for f in self.spec.item_fields], axis=-1)
        return gate_ids(ids, features[self.spec.history_gap(feedback)], mask, self.spec.gap_buckets + 1)

    def _logit(self, E_u, e_tar, interests, context, training):
        """The prediction MLP over [E_u, e_tar, f_c, f_v] (and the context when configured)."""
        parts = [flatten_fields(E_u), self.embeddings.item_vectors(e_tar), interests["click"], interests["unclick"]]
        if self.params.context:
            parts.append(flatten_fields(context))
        return self.head(tf.concat(parts, axis=-1), training=training)

    def score_candidates(self, user_features, item_features):
        """Eq. 1-3 depend on the user alone: run once for the user row, eq. 4 and the MLP per candidate."""
        emb = self.embeddings
        e_tar = emb.target(item_features)
        count = tf.shape(e_tar)[0]
        E_u = emb.user(user_features)
        interests = {}
        for feedback in FEEDBACK:
            E_cp, mask = emb.sequence(user_features, feedback)
            o, _ = self.interest[feedback].profile(E_u, E_cp, mask, self._gate_ids(user_features, feedback, mask))
            interests[feedback], _ = self.interest[feedback].target(tf.repeat(o, count, axis=0), e_tar)
        repeat = lambda x: tf.repeat(x, count, axis=0)  # noqa: E731
        return probability(self._logit(repeat(E_u), e_tar, interests, repeat(emb.context(user_features)), False))

    def contrastive_loss(self, features, f_c, masks, training) -> tf.Tensor:
        """Section 2.4: L_cl of eq. 5 around the anchor f_c [B, ffn_units[-1]] (pairs from the click and
        unclick ``masks`` of ``features``), in float32."""
        p = self.params
        emb = self.embeddings
        anchor = tf.cast(self.anchor_projection(f_c), tf.float32)  # [B, N*E]
        items = {}  # [B, T, N*E]: concatenated attribute embeddings, zero at pads
        for feedback in FEEDBACK:
            vectors = tf.cast(emb.item_vectors(emb.sequence(features, feedback, with_gap=False)[0]), tf.float32)
            items[feedback] = tf.stop_gradient(vectors) if p.detach_items else vectors
        positive_sim, positive_valid, negative_sim, negative_valid = hard_sample_pairs(
            anchor, items["click"], masks["click"], items["unclick"], masks["unclick"],
            k=p.num_positives, q=p.num_hard_negatives, eta=p.eta,
        )
        num_random = p.num_negatives - p.num_hard_negatives
        if num_random > 0:
            shape = tf.stack([tf.shape(anchor)[0], num_random])
            if training:
                uniform = tf.random.uniform(shape)
            else:  # evaluation and serving: deterministic (and stateless, so unused branches prune)
                uniform = tf.random.stateless_uniform(shape, seed=[0, 0])
            random_items, random_valid = sample_random_negatives(
                items["unclick"], masks["unclick"], features[USER_ID], uniform
            )
            random_sim = cosine_similarity(anchor[:, tf.newaxis, :], random_items)  # [B, K-q]
            negative_sim = tf.concat([negative_sim, random_sim], axis=1)
            negative_valid = tf.concat([negative_valid, random_valid], axis=1)
        return info_nce(positive_sim, positive_valid, negative_sim, negative_valid, p.tau)


__all__ = ["FADIDN", "AttributeTargetAttention", "FineGrainedInterest"]
