"""DUMN: Denoising User-aware Memory Network (Bian, Zhou, et al., RecSys 2021).

Paper: /work/shared/papers/DUMN.txt, section 3; open points closed by MODELS.md "DUMN".

Embedding layer (3.2): ``e_user`` is the concatenation of the M+1 user-field embeddings, ``e_item``
that of the target item's N attribute embeddings (N*E). A history position is its N attribute
embeddings concatenated (N*E) plus the time-gap embedding added to each attribute (MODELS.md):
``e_c, e_u, e_l, e_d`` [B, T, N*E], zero at pad positions.

Feature purification layer (3.3), per feedback sequence x in {c, u, l, d}, own parameters each:

* eq. 1-2  ``O_x = Concat(head_1..head_H) W_F``, ``head_h = softmax(Q_h K_h^T / sqrt(d_h)) V_h``,
  ``Q = e_x W_Q``, ``K = e_x W_K``, ``V = e_x W_V`` (``layers.MultiHeadAttention``; W_F is its W_O).
* eq. 3-4  ``alpha_j = softmax_j(ReLU(Concat(e_user, e_item, o_j) W_c))`` over real positions.
* eq. 5    ``f_x = sum_j alpha_j o_j``.
* eq. 6-7  ``f_oc = f_c - project(f_c, f_d)``, ``f_ou = f_u - project(f_u, f_l)`` with
  ``project(a, b) = (a.b / |b|^2) b``, and ``project(a, 0) = 0`` (a user with no dislikes keeps f_c).

User memory network (3.4), one memory per feedback type, ``M_c, M_u, M_l, M_d`` [m, Z]:

* eq. 8    controller ``h = ReLU(Concat(f_o, e_user) W_h)`` (width 512), read key ``k = h W_k``
  (together the FFN of eq. 8); the write head reads the same controller (as in NTM).
* eq. 9-10 ``w(j) = softmax_j(beta * cos(k, M(j)))`` (beta = ``key_strength``, 1 in the paper).
* eq. 11   ``r = sum_j w_r(j) M(j)`` (read from the memory as it was before this batch's write).
* eq. 12   ``M <- (1 - E) * M + A``, ``E = w_w (x) erase``, ``A = w_w (x) add``, ``erase = sigmoid(h W_e)``,
  ``add = tanh(h W_a)``, batch-averaged (``memory_write``); applied only when ``training=True``.

Preference-aware interactive representation (3.5), per feedback type:

* eq. 13   ``U = Concat(g(f_o) * sigmoid(f_o W1), g'(r) * sigmoid(r W2))``, g, g', W1, W2 linear maps
  to one common width (``pair_dim``).
* eq. 14   ``R_cross = Concat(U_c, U_u, U_l, U_d)``.
* eq. 15   logit = MLP(Concat(e_user, e_item, f_oc, f_ou, f_l, f_d, r_c, r_u, r_l, r_d, R_cross)).

Loss (3.6): ``L = L_ce + L_c + L_u + L_l + L_d`` (eq. 16, 20), each triplet term (eq. 17-19)
``max(d(q, s+) - d(q, s-) + margin, 0)`` with cosine distance ``d(a, b) = 1 - cos(a, b)`` and
anchor ``q = sum_j w_w(j) M'(j)`` read from the updated memory M' (eq. 18). Logged as
``triplet_click``, ``triplet_unclick``, ``triplet_like``, ``triplet_dislike``.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import pydantic
import tensorflow as tf
import tf_keras

from models.base import CTRModel, ModelOutput, ModelParams
from models.inputs import GAP_TABLE
from models.layers import LogitHead, MultiHeadAttention, flatten_fields, masked_softmax

# Feedback types in the paper's order, with the pair used by purification and the triplet loss.
FEEDBACK = ("click", "unclick", "like", "dislike")
PURIFIED_BY = {"click": "dislike", "unclick": "like"}  # eq. 6-7: <click, dislike>, <unclick, like>
TRIPLET_NEGATIVE = {"click": "unclick", "unclick": "click", "like": "dislike", "dislike": "like"}  # 3.6
_ABOVE_ANY_COSINE, _BELOW_ANY_COSINE = 2.0, -2.0  # scores of pad items: never the hardest sample


class DUMNParams(ModelParams):
    """DUMN hyper-parameters; defaults from MODELS.md (the paper's values where it gives them)."""

    num_heads: int = pydantic.Field(2, ge=1)  # H of eq. 1-2
    head_dim: Optional[int] = pydantic.Field(None, ge=1)  # per-head width; default N*E // num_heads
    purification: bool = True  # eq. 6-7 orthogonal mapping; off (DUMN-FP): f_oc = f_c, f_ou = f_u
    memory: bool = True  # eq. 8-12 user memory network; off (DUMN-UMN): no r, no write, no triplet
    memory_slots: int = pydantic.Field(64, ge=1)  # m (paper: 256)
    slot_dim: int = pydantic.Field(32, ge=1)  # Z (paper: 64)
    controller_units: int = pydantic.Field(512, ge=1)  # width of the FFN of eq. 8
    key_strength: float = pydantic.Field(1.0, gt=0)  # beta in softmax(beta * cosine); eq. 9 has none (1)
    pair_dim: int = pydantic.Field(32, ge=1)  # common width of the gated halves of eq. 13
    context: bool = False  # also feed hour/weekday to the prediction MLP (the paper has no context)
    triplet_loss: bool = True  # eq. 17-20 (DUMN-TL when off); needs memory
    triplet_margin: float = pydantic.Field(0.5, ge=0)
    triplet_click_weight: float = pydantic.Field(1.0, ge=0)  # L_c
    triplet_unclick_weight: float = pydantic.Field(1.0, ge=0)  # L_u
    triplet_like_weight: float = pydantic.Field(1.0, ge=0)  # L_l
    triplet_dislike_weight: float = pydantic.Field(1.0, ge=0)  # L_d


# ---- equations as pure functions ---------------------------------------------------------------
def orthogonal_map(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Eq. 6-7: ``a - project(a, b)``, ``project(a, b) = (a.b / |b|^2) b``, along the last axis.

    A zero ``b`` (a user with no explicit feedback of that type) projects to 0, so ``a`` is
    returned exactly, with finite gradients. Computed in float32, returned in ``a``'s dtype.
    """
    a32, b32 = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    coefficient = tf.math.divide_no_nan(
        tf.reduce_sum(a32 * b32, axis=-1, keepdims=True), tf.reduce_sum(b32 * b32, axis=-1, keepdims=True)
    )
    return tf.cast(a32 - coefficient * b32, a.dtype)


def content_addressing(key: tf.Tensor, memory: tf.Tensor, key_strength: float = 1.0) -> tf.Tensor:
    """Eq. 9-10: ``w(j) = softmax_j(beta * cos(k, M(j)))``; key [B, Z], memory [m, Z] -> [B, m]."""
    cosine = tf.matmul(tf.math.l2_normalize(key, axis=-1), tf.math.l2_normalize(memory, axis=-1), transpose_b=True)
    return tf.nn.softmax(tf.cast(key_strength, cosine.dtype) * cosine, axis=-1)


def memory_read(weights: tf.Tensor, memory: tf.Tensor) -> tf.Tensor:
    """Eq. 11 / 18: ``sum_j w(j) M(j)``; weights [B, m], memory [m, Z] -> [B, Z]."""
    return tf.matmul(weights, memory)


def memory_write(memory: tf.Tensor, weights: tf.Tensor, erase: tf.Tensor, add: tf.Tensor, writes: tf.Tensor) -> tf.Tensor:
    """Eq. 12, batch-averaged: ``M' = (1 - E) * M + A`` with
    ``E = 1/B sum_b [writes_b] w_b (x) erase_b`` and ``A = 1/B sum_b [writes_b] w_b (x) add_b``.

    memory [m, Z], weights [B, m], erase/add [B, Z], writes [B] bool (a user who does not write
    contributes a zero erase and a zero add). The average is over the whole batch B, so the mean
    of equal-sized replicas' updates is exactly the global batch's update (MirroredStrategy).
    """
    writes = tf.cast(writes, weights.dtype)[:, tf.newaxis]
    batch = tf.cast(tf.shape(weights)[0], weights.dtype)
    weighted = weights * writes / batch
    E = tf.matmul(weighted, erase, transpose_a=True)  # [m, Z]
    A = tf.matmul(weighted, add, transpose_a=True)
    return (1.0 - E) * memory + A


def triplet_loss(
    anchors: tf.Tensor,
    anchor_mask: tf.Tensor,
    positives: tf.Tensor,
    positive_mask: tf.Tensor,
    negatives: tf.Tensor,
    negative_mask: tf.Tensor,
    margin: float,
) -> tf.Tensor:
    """Eq. 17, 19 with batch-hard mining (section 4.3.4): a float32 scalar.

    anchors [A, Z], positives [P, Z], negatives [Q, Z], masks bool. Per real anchor: the hardest
    positive is the real positive of least cosine similarity, the hardest negative the real
    negative of greatest similarity; ``max(d(q, s+) - d(q, s-) + margin, 0)`` with
    ``d = 1 - cos``, averaged over real anchors. Pad rows are never chosen; 0 when there is no
    real anchor, positive or negative.
    """
    q = tf.math.l2_normalize(tf.cast(anchors, tf.float32), axis=-1)
    positives, negatives = tf.cast(positives, tf.float32), tf.cast(negatives, tf.float32)
    # Mining: choosing the hardest sample is piecewise constant, so the [A, P] similarity matrices
    # need no gradient; only the chosen pairs' distances are differentiated (the same gradient as
    # reduce_min/max over the masked matrix, at a fraction of the cost). A pad row scores
    # ``pad_score`` through one extra column (q' = [q, 1], s' = [s/|s|, 0] or [0, pad_score]), so the
    # matrix needs no masking pass; top_k(., 1) is argmax (first index on ties), about twice as fast.
    anchor = tf.pad(tf.stop_gradient(q), [[0, 0], [0, 1]], constant_values=1.0)  # q' = [q, 1]

    def hardest(samples, mask, pad_score, sign):  # [A, Z]: the row of greatest sign * cosine
        real = mask[:, tf.newaxis]
        unit = tf.where(real, tf.math.l2_normalize(tf.stop_gradient(samples), axis=-1), 0.0)
        unit = tf.concat([unit, tf.where(real, 0.0, pad_score)], axis=-1)
        similarity = tf.matmul(anchor, unit, transpose_b=True)
        return tf.gather(samples, tf.math.top_k(sign * similarity, k=1).indices[:, 0])

    hardest_pos = hardest(positives, positive_mask, _ABOVE_ANY_COSINE, -1.0)  # least similar real positive [A, Z]
    hardest_neg = hardest(negatives, negative_mask, _BELOW_ANY_COSINE, 1.0)  # most similar real negative
    d_pos = 1.0 - tf.reduce_sum(q * tf.math.l2_normalize(hardest_pos, axis=-1), axis=-1)  # eq. 19
    d_neg = 1.0 - tf.reduce_sum(q * tf.math.l2_normalize(hardest_neg, axis=-1), axis=-1)
    hinge = tf.nn.relu(d_pos - d_neg + margin)
    real = tf.cast(anchor_mask & tf.reduce_any(positive_mask) & tf.reduce_any(negative_mask), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(hinge * real), tf.reduce_sum(real))


def distinct_items(vectors: tf.Tensor, ids: tf.Tensor, mask: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The distinct real items of a batch's sequences: ([U + 1, D] vectors, [U + 1] mask).

    vectors [B, T, D] (a function of the item's ids), ids [B, T, N] (the item's field indices),
    mask [B, T]. An item repeated across positions and users is one candidate for mining: the
    hardest sample is the same, at U instead of B*T rows (ml1m: about 3.7k instead of 200k).
    One pad row (mask False) keeps the result non-empty.
    """
    real = tf.where(mask)  # [P, 2]
    _, index = tf.raw_ops.UniqueV2(x=tf.gather_nd(ids, real), axis=[0])
    count = tf.reduce_max(tf.concat([index + 1, [0]], 0))
    first = tf.math.unsorted_segment_min(tf.range(tf.size(index)), index, count)  # a position of each item
    chosen = tf.gather(tf.gather_nd(vectors, real), first)
    padded = tf.concat([chosen, tf.zeros_like(vectors[:1, 0])], 0)
    return padded, tf.sequence_mask(count, count + 1)


class TripletSamples(NamedTuple):
    """One memory's triplet candidates: the batch's distinct items of two feedback types,
    [U, N*E] embeddings and [U] masks (``distinct_items``)."""

    positives: tf.Tensor
    positive_mask: tf.Tensor
    negatives: tf.Tensor
    negative_mask: tf.Tensor


# ---- layers --------------------------------------------------------------------------------------
class FeedbackEncoder(tf_keras.layers.Layer):
    """Eq. 1-5 for one feedback sequence in two calls: self-attention (eq. 1-2, the user's side
    alone), then target-aware attention pooling -> f (eq. 3-5)."""

    def __init__(self, num_heads: int, head_dim: int, width: int, name: Optional[str] = None):
        super().__init__(name=name)
        self.self_attention = MultiHeadAttention(num_heads, head_dim, output_dim=width, name="self_attention")
        # W_c of eq. 3 split by rows: Concat(e_user, e_item, o_j) W_c = [e_user, e_item] W_c^q + o_j W_c^o
        self.W_c_query = tf_keras.layers.Dense(1, use_bias=False, name="W_c_query")
        self.W_c_sequence = tf_keras.layers.Dense(1, use_bias=False, name="W_c_sequence")

    def call(self, x, mask, query=None):
        """Without ``query``: eq. 1-2, ``x`` is e_x and the result O_x [B, T, D] (the user's side
        alone). With ``query`` [B, Q]: eq. 3-5, ``x`` is O_x and the result f [B, D]."""
        if query is None:
            O_x, _ = self.self_attention(x, x, x, key_mask=mask)  # eq. 1-2
            return O_x
        scores = tf.nn.relu(self.W_c_query(query)[:, tf.newaxis, :] + self.W_c_sequence(x))  # eq. 3
        alpha = masked_softmax(tf.squeeze(scores, -1), mask)  # eq. 4
        return tf.einsum("bt,btd->bd", alpha, x)  # eq. 5


class UserMemory(tf_keras.layers.Layer):
    """One memory of the user memory network (eq. 8-12, 18) with its controller, heads and triplet term.

    ``M`` [m, Z] is model state shared by all users: a non-trainable float32 variable, mirrored
    under MirroredStrategy (ON_WRITE, MEAN: every replica assigns its batch update and all see
    their average). It is assigned only when ``training=True``.
    """

    def __init__(self, slots: int, slot_dim: int, controller_units: int, key_strength: float, margin: float, name: Optional[str] = None):
        super().__init__(name=name)
        self.slots, self.slot_dim, self.key_strength, self.margin = slots, slot_dim, key_strength, margin
        self.controller = tf_keras.layers.Dense(controller_units, activation="relu", name="controller")  # eq. 8
        self.read_key = tf_keras.layers.Dense(slot_dim, name="read_key")  # k of eq. 8
        self.write_key = tf_keras.layers.Dense(slot_dim, name="write_key")  # key of w_w (eq. 12)
        self.erase_head = tf_keras.layers.Dense(slot_dim, activation="sigmoid", name="erase_head")
        self.add_head = tf_keras.layers.Dense(slot_dim, activation="tanh", name="add_head")
        self.item_projection = tf_keras.layers.Dense(slot_dim, use_bias=False, name="item_projection")  # s -> Z

    def build(self, input_shape):
        self.M = self.add_weight(
            name="M",
            shape=[self.slots, self.slot_dim],
            dtype=tf.float32,
            initializer=tf_keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.slot_dim)),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.MEAN,
            experimental_autocast=False,  # memory math is float32 under mixed precision too
        )
        super().build(input_shape)

    def call(self, f_o, e_user, writes, samples: Optional[TripletSamples] = None, training=False):
        """(r [B, Z] float32, triplet term or None).

        ``writes`` [B] bool: users who write (eq. 12). ``samples``: the items for this memory's
        triplet term (eq. 17), or None for no term.
        """
        M = tf.convert_to_tensor(self.M)  # read once: the state before this batch's write
        h = self.controller(tf.concat([f_o, e_user], axis=-1))  # eq. 8
        w_r = content_addressing(tf.cast(self.read_key(h), tf.float32), M, self.key_strength)  # eq. 9-10
        r = memory_read(w_r, M)  # eq. 11
        if not (training or samples is not None):
            return r, None
        w_w = content_addressing(tf.cast(self.write_key(h), tf.float32), M, self.key_strength)
        erase, add = tf.cast(self.erase_head(h), tf.float32), tf.cast(self.add_head(h), tf.float32)
        M_updated = memory_write(M, w_w, erase, add, writes)  # eq. 12
        if training:
            self.M.assign(tf.stop_gradient(M_updated))  # replica context: the replicas' mean is stored
        if samples is None:
            return r, None
        q = memory_read(w_w, M_updated)  # eq. 18: anchor from the updated memory
        loss = triplet_loss(
            q,
            writes,
            self.item_projection(samples.positives),
            samples.positive_mask,
            self.item_projection(samples.negatives),
            samples.negative_mask,
            self.margin,
        )
        return r, loss


class PreferenceGate(tf_keras.layers.Layer):
    """Eq. 13: ``U = Concat(g(f_o) * sigmoid(f_o W1), g'(r) * sigmoid(r W2))`` (the r half if memory)."""

    def __init__(self, width: int, with_memory: bool, name: Optional[str] = None):
        super().__init__(name=name)
        self.g = tf_keras.layers.Dense(width, use_bias=False, name="g")
        self.W1 = tf_keras.layers.Dense(width, use_bias=False, name="W1")
        if with_memory:
            self.g_prime = tf_keras.layers.Dense(width, use_bias=False, name="g_prime")
            self.W2 = tf_keras.layers.Dense(width, use_bias=False, name="W2")

    def call(self, f_o, r=None):
        parts = [self.g(f_o) * tf.sigmoid(self.W1(f_o))]
        if r is not None:
            parts.append(self.g_prime(r) * tf.sigmoid(self.W2(r)))
        return tf.concat(parts, axis=-1)


class EncodedSequence(NamedTuple):
    """One feedback sequence after eq. 1-2 (the user's side of the purification layer)."""

    O_x: tf.Tensor  # [B, T, D] self-attention output
    items: tf.Tensor  # s: item embeddings without gap [B, T, N*E] (triplet samples)
    mask: tf.Tensor  # [B, T] bool
    item_ids: tf.Tensor  # the items' field indices [B, T, N]


class ShortTerm(NamedTuple):
    """What the embedding and feature purification layers give (section 3.2-3.3)."""

    e_user: tf.Tensor  # [B, (M+1)*E]
    e_item: tf.Tensor  # [B, N*E]
    items: Dict[str, tf.Tensor]  # feedback -> s: item embeddings without gap [B, T, N*E] (triplet samples)
    item_ids: Dict[str, tf.Tensor]  # feedback -> the items' field indices [B, T, N]
    masks: Dict[str, tf.Tensor]  # feedback -> [B, T] bool
    f: Dict[str, tf.Tensor]  # feedback -> f_c, f_u, f_l, f_d (eq. 5)
    f_o: Dict[str, tf.Tensor]  # feedback -> f_oc, f_ou (eq. 7), f_l, f_d


class DUMN(CTRModel):
    """DUMN. Deviations from the paper, and the open points MODELS.md closes:

    * Self-attention logits are scaled by sqrt(head dimension), not sqrt(T) (MODELS.md). Q, K, V
      project the whole position vector before splitting into heads (the standard multi-head
      layer), rather than projecting each E/H slice of it (a block-diagonal special case).
    * Items have N attributes: a position is its N attribute embeddings concatenated (N*E, the
      paper's E for N=1), plus the time-gap embedding (MODELS.md). The triplet samples s are the
      item embeddings without the gap (the gap describes the event, not the item).
    * W_c of eq. 3 is applied as two row blocks (query and o_j) instead of to a tiled concatenation:
      the same linear map. Eq. 3 has no bias; the ReLU before the softmax is kept as written.
      Note (kept as the paper and MODELS.md write it): being linear, the [e_user, e_item] rows of
      W_c add the same number to every position's score, so the target and the user change the
      weights alpha only through the ReLU clipping; the pooling is close to target-independent.
    * The orthogonal projection of eq. 6 divides by |b|^2 and defines project(a, 0) = 0 (MODELS.md):
      a user without dislikes (likes) keeps f_c (f_u) unchanged.
    * Memories are model state shared by all users (MODELS.md), m=64 x Z=32 by default (paper
      256 x 64), initialised N(0, 1/Z), non-trainable; they change only through the write head in
      training and are frozen for evaluation and serving. The write (eq. 12) is averaged over the
      batch (the paper writes per event); a user whose sequence of that type is empty does not
      write (there is nothing of that type to remember) and is no anchor of that triplet term.
    * The controller is one ReLU layer (controller_units, "FFN(512)") shared by the read head
      (eq. 8), the write key, erase = sigmoid(.) and add = tanh(.) heads, as in NTM; the paper
      names only the read FFN. ``key_strength`` (beta, default 1 = the paper) sharpens eq. 9.
    * The read (eq. 11) uses the memory before this batch's write (NTM order: read, then write);
      the triplet anchor (eq. 18) uses the updated memory M' of this batch (MODELS.md), so the
      triplet gradient reaches the write head through w_w, erase and add, and the item
      projection through s. Under MirroredStrategy the anchor uses the replica's own M' and the
      stored memory is the mean over replicas, which equals the global batch's update (the
      average of eq. 12 divides by the batch size, so equal-sized replicas average exactly).
      The memory is read in float32 under mixed precision.
    * Triplet samples (eq. 17) are batch-hard (section 4.3.4), not random: for M_x, the positive
      is the least similar item among all real x items of the batch (every user's sequence), the
      negative the most similar item of the paired type (click<->unclick, like<->dislike); items
      are projected to Z by a per-memory linear map (the paper's samples have width E, its
      anchors width Z and leaves the map implicit). The mining itself carries no gradient (the
      choice is piecewise constant); the distances of the chosen pairs do. An item that occurs
      many times in the batch is one candidate (``distinct_items``): the same hardest samples,
      without a [B, B*T] similarity matrix per memory.
    * Eq. 13: g, g' (and W1, W2) are linear maps to ``pair_dim`` (MODELS.md). The prediction MLP
      (256, 128) sees [e_user, e_item, f_oc, f_ou, f_l, f_d, r_c..r_d, R_cross] (MODELS.md: the text
      of 3.5, where eq. 15 lists only e_user, e_item and R_cross); hour/weekday only if ``context``.
    * Serving many candidates (``score_candidates``): eq. 1-2 depend on the user's sequences
      alone and run once per request; eq. 3 onwards see the target and run per candidate.
    * Ablations: ``purification=False`` is DUMN-FP; ``memory=False`` is DUMN-UMN (no r, no write,
      U keeps its short-term half, no triplet terms); ``triplet_loss=False`` is DUMN-TL.
    """

    Params = DUMNParams

    def __init__(self, spec, vocab_sizes: Mapping[str, int], params: DUMNParams, name: str = "dumn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        missing = [fb for fb in FEEDBACK if fb not in spec.feedback_types]
        if missing:
            raise ValueError(f"DUMN needs the four feedback sequences {FEEDBACK}; the spec lacks {missing}")
        width = len(spec.item_fields) * self.embedding_dim  # N*E
        head_dim = params.head_dim or max(1, width // params.num_heads)
        self.encoders = {
            fb: FeedbackEncoder(params.num_heads, head_dim, width, name=f"purification_{fb}") for fb in FEEDBACK
        }
        self.memories = {}
        if params.memory:
            self.memories = {
                fb: UserMemory(
                    params.memory_slots,
                    params.slot_dim,
                    params.controller_units,
                    params.key_strength,
                    params.triplet_margin,
                    name=f"memory_{fb}",
                )
                for fb in FEEDBACK
            }
        self.gates = {fb: PreferenceGate(params.pair_dim, params.memory, name=f"pair_{fb}") for fb in FEEDBACK}
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def loss_weights(self) -> Dict[str, float]:
        p = self.params
        if not (p.memory and p.triplet_loss):
            return {}
        return {
            "triplet_click": p.triplet_click_weight,
            "triplet_unclick": p.triplet_unclick_weight,
            "triplet_like": p.triplet_like_weight,
            "triplet_dislike": p.triplet_dislike_weight,
        }

    # ---- 3.2-3.3 -------------------------------------------------------------------------------
    def short_term(self, features) -> ShortTerm:
        emb = self.embeddings
        e_user = flatten_fields(emb.user(features))
        e_item = emb.item_vectors(emb.target(features))
        return self.purified(e_user, e_item, self.encoded_sequences(features))

    def encoded_sequences(self, features) -> Dict[str, EncodedSequence]:
        """Eq. 1-2 for each feedback sequence: what depends on the user's histories alone."""
        emb = self.embeddings
        encoded = {}
        for fb in FEEDBACK:
            attributes, mask = emb.sequence(features, fb, with_gap=False)  # [B, T, N, E], zero at pads
            gap = emb.lookup(GAP_TABLE, features[self.spec.history_gap(fb)])
            gap = gap * tf.cast(mask, gap.dtype)[:, :, tf.newaxis]
            e_x = emb.item_vectors(attributes + gap[:, :, tf.newaxis, :])  # e_c, e_u, e_l, e_d
            item_ids = tf.stack([features[self.spec.history(fb, field)] for field in self.spec.item_fields], axis=-1)
            encoded[fb] = EncodedSequence(self.encoders[fb](e_x, mask), emb.item_vectors(attributes), mask, item_ids)
        return encoded

    def purified(self, e_user, e_item, encoded: Mapping[str, EncodedSequence]) -> ShortTerm:
        """Eq. 3-7: target-aware pooling of each encoded sequence, then the orthogonal mapping."""
        query = tf.concat([e_user, e_item], axis=-1)
        f = {fb: self.encoders[fb](seq.O_x, seq.mask, query) for fb, seq in encoded.items()}  # eq. 3-5
        f_o = dict(f)
        if self.params.purification:
            for implicit, explicit in PURIFIED_BY.items():
                f_o[implicit] = orthogonal_map(f[implicit], f[explicit])  # eq. 6-7
        return ShortTerm(
            e_user, e_item,
            items={fb: seq.items for fb, seq in encoded.items()},
            item_ids={fb: seq.item_ids for fb, seq in encoded.items()},
            masks={fb: seq.mask for fb, seq in encoded.items()},
            f=f, f_o=f_o,
        )

    # ---- 3.4 and 3.6 ---------------------------------------------------------------------------
    def long_term(self, short: ShortTerm, training: bool, losses: bool = True):
        """r per memory (eq. 8-11), the write (eq. 12, training only) and the triplet terms (eq. 17-19)."""
        r, aux = {}, {}
        if not self.params.memory:
            return r, aux
        for fb in FEEDBACK:
            writes = tf.reduce_any(short.masks[fb], axis=1)  # users with at least one item of this type
            samples = None
            if self.params.triplet_loss and losses:
                distinct = lambda x: distinct_items(short.items[x], short.item_ids[x], short.masks[x])  # noqa: E731
                samples = TripletSamples(*distinct(fb), *distinct(TRIPLET_NEGATIVE[fb]))
            read, loss = self.memories[fb](short.f_o[fb], short.e_user, writes, samples, training=training)
            r[fb] = tf.cast(read, short.e_user.dtype)
            if loss is not None:
                aux[f"triplet_{fb}"] = loss
        return r, aux

    # ---- 3.5 -----------------------------------------------------------------------------------
    def forward(self, features, training=False, losses=True):
        short = self.short_term(features)
        r, aux = self.long_term(short, training, losses)
        context = flatten_fields(self.embeddings.context(features)) if self.params.context else None
        return ModelOutput(logit=self._logit(short, r, context, training), aux_losses=aux)

    def _logit(self, short: ShortTerm, r, context, training):
        U = [self.gates[fb](short.f_o[fb], r.get(fb)) for fb in FEEDBACK]  # eq. 13
        R_cross = tf.concat(U, axis=-1)  # eq. 14
        parts = [short.e_user, short.e_item, *(short.f_o[fb] for fb in FEEDBACK), *(r[fb] for fb in r), R_cross]
        if context is not None:
            parts.append(context)
        return self.head(tf.concat(parts, axis=-1), training=training)  # eq. 15

    def score_candidates(self, user_features, item_features):
        """Eq. 1-2 (self-attention over the user's four sequences) once for the user row; eq. 3-15
        per candidate (the pooling weights see the target)."""
        emb = self.embeddings
        e_item = emb.item_vectors(emb.target(item_features))
        count = tf.shape(e_item)[0]
        repeat = lambda x: tf.repeat(x, count, axis=0)  # noqa: E731
        encoded = {fb: EncodedSequence(*map(repeat, seq)) for fb, seq in self.encoded_sequences(user_features).items()}
        short = self.purified(repeat(flatten_fields(emb.user(user_features))), e_item, encoded)
        r, _ = self.long_term(short, training=False, losses=False)
        context = repeat(flatten_fields(emb.context(user_features))) if self.params.context else None
        return tf.sigmoid(self._logit(short, r, context, training=False))
