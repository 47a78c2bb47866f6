"""DUMN: Denoising User-aware Memory Network (Bian, Zhou, et al., RecSys 2021).

Paper: /work/shared/papers/DUMN.txt, section 3; open points closed as docs/models.md "DUMN" records (v2).
Eq. 1-7 live in ``models.dumn_purification``, eq. 8-12 and 18 in ``models.dumn_memory``, eq. 17-19
in ``models.dumn_triplet``; this module assembles them (eq. 13-16) with the deviations below.

Embedding layer (3.2): ``e_user`` is the concatenation of the M+1 user-field embeddings, ``e_item``
that of the target item's N attribute embeddings (N*E). A history position is its N attribute
embeddings concatenated (N*E) plus the time-gap embedding added to each attribute (docs/models.md):
``e_c, e_u, e_l, e_d`` [B, T, N*E], zero at pad positions.

Feature purification layer (3.3), per feedback sequence x in {c, u, l, d}, own parameters each:

* eq. 1-2  ``O_x = Concat(head_1..head_H) W_F``, ``head_h = softmax(Q_h K_h^T / sqrt(d_h)) V_h``,
  ``Q = LN(e_x) W_Q``, ``K = LN(e_x) W_K``, ``V = e_x W_V`` (``layers.MultiHeadAttention``, pre-LN;
  W_F is its W_O).
* eq. 3-4  ``alpha_j = softmax_j(ReLU(Concat(e_user, e_item, o_j) W_c))`` over real positions.
* eq. 5    ``f_x = sum_j alpha_j o_j``.
* eq. 6-7  ``f_oc = f_c - project(f_c, f_d)``, ``f_ou = f_u - project(f_u, f_l)`` with
  ``project(a, b) = (a.b / |b|^2) b``, and ``project(a, 0) = 0`` (a user with no dislikes keeps f_c).

User memory network (3.4), one memory per feedback type, ``M_c, M_u, M_l, M_d`` [m, Z], each
starting from an orthogonal matrix (distinct slots):

* eq. 8    controller ``h = ReLU(Concat(f_o, e_user) W_h)`` (width 512), read key ``k = h W_k``
  (together the FFN of eq. 8); the write head reads the same controller (as in NTM).
* eq. 9-10 ``w(j) = softmax_j(beta * cos(k, M(j)))`` with NTM's key strength
  ``beta = 1 + softplus(h W_beta + b_beta)`` (>= 1, one per example, starting at
  ``key_strength_init``), for the read head and, with its own key and beta, the write head
  (docs/models.md, v2; the paper's eq. 9 is beta = 1).
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
anchor ``q = sum_j w_w(j) M'(j)`` read from the updated memory M' (eq. 18). The samples are mined
per example from that user's own histories (docs/models.md, v2): for M_c every pair of one of the
user's click items and one of the user's unclick items, the hinge averaged over the pairs (or, with
``triplet_mining="hardest"``, eq. 19's least similar click and most similar unclick), an item in
both of the user's pools skipped; likewise M_u (unclick vs click), M_l (like vs dislike), M_d
(dislike vs like). The term is averaged over the examples that have one. Logged as
``triplet_click``, ``triplet_unclick``, ``triplet_like``, ``triplet_dislike``.

Diagnostics (``val_diag_<name>``, docs/models.md "Attention numerics"): ``purification_entropy`` and
``pooling_entropy``, the mean normalised entropies of eq. 1 (real query rows) and eq. 4, averaged
over the feedback sequences; with the memory, ``slot_cosine`` (mean cosine between two distinct
slots, averaged over the four memories; about 0 for the orthogonal start, 1 = collapsed) and
``read_entropy`` (normalised entropy of w_r); with the triplet loss, ``triplet_coverage`` (the
fraction of examples with a triplet term, averaged over the four memories).
"""
from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import tensorflow as tf
import tf_keras

from contract.features import FEEDBACK_TYPES, ITEM_ID
from contract.model_params import DUMNParams
from models.base import CTRModel, ModelOutput, probability
from models.dumn_memory import UserMemory, mean_slot_cosine
from models.dumn_purification import FeedbackEncoder, orthogonal_map
from models.dumn_triplet import TripletSamples, own_pools
from models.inputs import GAP_TABLE
from models.layers import LogitHead, flatten_fields, normalized_entropy

# The feedback types (contract.features.FEEDBACK_TYPES, the paper's order) pair up for purification
# and the triplet loss.
PURIFIED_BY = {"click": "dislike", "unclick": "like"}  # eq. 6-7: <click, dislike>, <unclick, like>
TRIPLET_NEGATIVE = {"click": "unclick", "unclick": "click", "like": "dislike", "dislike": "like"}  # 3.6
TRIPLET_PAIRS = ("click", "like")  # one of each pair: its pools and its partner's are mined together


# ---- layers --------------------------------------------------------------------------------------
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
    attention: tf.Tensor  # [B, H, T, T] self-attention weights (diagnostics)
    items: tf.Tensor  # s: item embeddings without gap [B, T, N*E] (triplet samples)
    mask: tf.Tensor  # [B, T] bool
    item_id: tf.Tensor  # [B, T] the items' ids (triplet pools)


class ShortTerm(NamedTuple):
    """What the embedding and feature purification layers give (section 3.2-3.3)."""

    e_user: tf.Tensor  # [B, (M+1)*E]
    e_item: tf.Tensor  # [B, N*E]
    encoded: Dict[str, EncodedSequence]  # feedback -> eq. 1-2
    alpha: Dict[str, tf.Tensor]  # feedback -> pooling weights [B, T] (eq. 4)
    f: Dict[str, tf.Tensor]  # feedback -> f_c, f_u, f_l, f_d (eq. 5)
    f_o: Dict[str, tf.Tensor]  # feedback -> f_oc, f_ou (eq. 7), f_l, f_d


class DUMN(CTRModel):
    """DUMN. Deviations from the paper, and how its open points are closed (docs/models.md "DUMN"):

    * Self-attention logits are scaled by sqrt(head dimension), not sqrt(T) (docs/models.md), and the
      inputs to W_Q and W_K are layer-normalised (pre-LN, docs/models.md "Attention numerics"). Q, K, V
      project the whole position vector before splitting into heads (the standard multi-head
      layer), rather than projecting each E/H slice of it (a block-diagonal special case).
    * Items have N attributes: a position is its N attribute embeddings concatenated (N*E, the
      paper's E for N=1), plus the time-gap embedding (docs/models.md). The triplet samples s are the
      item embeddings without the gap (the gap describes the event, not the item).
    * W_c of eq. 3 is applied as two row blocks (query and o_j) instead of to a tiled concatenation:
      the same linear map. Eq. 3 has no bias; the ReLU before the softmax is kept as written.
      Note (kept as the paper and docs/models.md write it): being linear, the [e_user, e_item] rows of
      W_c add the same number to every position's score, so the target and the user change the
      weights alpha only through the ReLU clipping; the pooling is close to target-independent.
      o_j enters the scores layer-normalised (its W_c rows see LN(o_j); eq. 5 pools o_j itself):
      o_j is at the embeddings' init scale (normal(0, 1e-4)), so without it every position scored
      alike and alpha stayed uniform (``pooling_entropy`` 1.0), as the pre-LN of docs/models.md prevents for
      the dot-product attentions.
      The W_c rows that read LN(o_j) are applied as one dot product per position, from o_j's mean
      and variance (``FeedbackEncoder._normalized_sequence_scores``), not to a materialised LN(o).
    * The orthogonal projection of eq. 6 divides by |b|^2 and defines project(a, 0) = 0 (docs/models.md):
      a user without dislikes (likes) keeps f_c (f_u) unchanged.
    * Memories are model state shared by all users (docs/models.md), m=64 x Z=32 by default (paper
      256 x 64), non-trainable; they change only through the write head in training and are
      frozen for evaluation and serving. They start distinct (docs/models.md, v2; the paper gives no
      init): an orthogonal matrix, i.e. orthonormal slots when m <= Z; when m > Z (the default)
      m slots cannot all be orthogonal in R^Z and the matrix has orthonormal columns instead (a
      tight frame: the slots' mean pairwise cosine is about 0). The write (eq. 12) is averaged
      over the batch (the paper writes per event); a user whose sequence of that type is empty
      does not write (there is nothing of that type to remember).
    * The controller is one ReLU layer (controller_units, "FFN(512)") shared by the read head
      (eq. 8), the write key, erase = sigmoid(.) and add = tanh(.) heads, as in NTM; the paper
      names only the read FFN.
    * Key strength (docs/models.md, v2, from NTM, which the paper builds on): the read and the write
      head each get ``beta = 1 + softplus(h W_beta + b_beta)`` from the controller, one per
      example, and address with ``softmax_j(beta * cos)``; the paper's eq. 9 has beta = 1, with
      which a softmax over cosines in [-1, 1] spreads every write over all m slots almost evenly
      and the shared memory collapses to one vector (v1: slot cosine 0.95 after 100 steps).
      NTM gives no init: b_beta starts at softplus^-1(key_strength_init - 1), beta = 10 by
      default. A key's cosines with the slots spread by about 1/sqrt(Z), so beta sets how few
      slots the first writes reach, and it moves slowly (Adam moves b_beta ~1e-3 per step). On
      the toy stream of the tests (two kinds of users, 400 steps of 64): with m=64, Z=32 a
      starting beta of 1.7 (zero bias), 5, 10, 20 all bring the triplet terms to 0, with read
      entropy 0.99, 0.84, 0.63, 0.07 and slot cosine 0.30, 0.48, 0.29, 0.04; with m=Z=8, beta
      1.7 collapses the memory (slot cosine 1.0, triplet terms stay at the margin) and beta 20
      stalls the triplet terms (near one-hot writes pass little gradient to the write key).
    * The read (eq. 11) uses the memory before this batch's write (NTM order: read, then write);
      the triplet anchor (eq. 18) uses the updated memory M' of this batch (docs/models.md), so the
      triplet gradient reaches the write head through w_w (key and beta), erase and add, and the
      item projection through s. Under MirroredStrategy the anchor uses the replica's own M' and
      the stored memory is the mean over replicas, which equals the global batch's update (the
      average of eq. 12 divides by the batch size, so equal-sized replicas average exactly).
      The memory is read in float32 under mixed precision.
    * Triplet samples (eq. 17) are, by default, every (positive, negative) pair of the user's pools,
      the hinge averaged over the pairs (``triplet_mining="all"``), not the paper's hardest pair
      (``"hardest"``, eq. 19; section 4.3.4 finds hardest better than random). Measured with
      hardest pairs on the known-answer logs (``dumn``, seed 0, 10 epochs): the click and unclick
      terms sat at the margin, 0.50-0.51 on the training and the validation split from epoch 3 to
      the end, while like/dislike fell to 0.04-0.15. Clicks are noisy (a misclick, a session
      effect), so a user's least similar click is almost always farther from any anchor than the
      most similar unclick: the hinge cannot go below the margin, and it is lowest when all
      distances are alike, a pull towards collapse (FaceNet, Schroff et al. 2015, section 3.2).
      The samples are mined per example from that user's own histories (docs/models.md, v2; section 4.3.4 says
      "in each batch", which v1 read as the distinct items of the whole batch: an item clicked by
      one user and unclicked by another then sat in both pools and the loss could not fall below
      the margin). For M_x the positives are the user's real x items and the negatives the user's
      items of the paired type (click<->unclick, like<->dislike; with hardest mining, the least
      similar positive and the most similar negative); an item in both of the user's pools is skipped from both; an example with
      an empty pool has no term, and each term is the mean over the examples that have one. The
      pools are the user's sequences (the T most recent events of each type, the history an
      example carries), where the paper samples from all of the user's interactions. Items are
      projected to Z by a per-memory linear map (the paper's samples have width E, its anchors
      width Z, and leaves the map implicit). With hardest mining the choice carries no gradient
      (it is piecewise constant); the distances of the chosen pairs do.
    * Eq. 13: g, g' (and W1, W2) are linear maps to ``pair_dim`` (docs/models.md). The prediction MLP
      (256, 128) sees [e_user, e_item, f_oc, f_ou, f_l, f_d, r_c..r_d, R_cross] (docs/models.md: the text
      of 3.5, where eq. 15 lists only e_user, e_item and R_cross); hour/weekday only if ``context``.
    * Serving many candidates (``score_candidates``): eq. 1-2 depend on the user's sequences
      alone and run once per request; eq. 3 onwards see the target and run per candidate.
    * Eq. 3 as printed, ``ReLU(Concat(e_user, e_item, o_j) W_c)``, is linear in the concatenation,
      so e_item adds the same amount to every position's score: the pooling cannot prefer the
      positions that match the target, although the text calls it "the attention value between
      the target ad item and ... each position". Measured: the pooling's entropy stayed at 0.997
      on the known-answer logs (where the click depends on recent same-category clicks) and 0.995
      on ml1m-seq. ``pooling_interaction`` (default) adds the block ``LN(e_item) (.) LN(o_j)`` to
      the concatenation (DIN's product term; its rows of W_c are ``W_c_interaction``), which makes
      the score depend on how o_j matches the target; ``pooling_interaction=False`` is eq. 3 as
      printed (``dumn_paper_pooling`` in benchmarks/quality.py).
    * Ablations: ``purification=False`` is DUMN-FP; ``memory=False`` is DUMN-UMN (no r, no write,
      U keeps its short-term half, no triplet terms); ``triplet_loss=False`` is DUMN-TL.
    """

    Params = DUMNParams

    def __init__(self, spec, vocab_sizes: Mapping[str, int], params: DUMNParams, name: str = "dumn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        missing = [fb for fb in FEEDBACK_TYPES if fb not in spec.feedback_types]
        if missing:
            raise ValueError(f"DUMN needs the four feedback sequences {FEEDBACK_TYPES}; the spec lacks {missing}")
        width = len(spec.item_fields) * self.embedding_dim  # N*E
        head_dim = params.head_dim or max(1, width // params.num_heads)
        self.encoders = {
            fb: FeedbackEncoder(params.num_heads, head_dim, width, params.pooling_interaction, name=f"purification_{fb}")
            for fb in FEEDBACK_TYPES
        }
        self.memories = {}
        if params.memory:
            self.memories = {
                fb: UserMemory(
                    params.memory_slots,
                    params.slot_dim,
                    params.controller_units,
                    params.key_strength_init,
                    params.triplet_margin,
                    params.triplet_mining,
                    name=f"memory_{fb}",
                )
                for fb in FEEDBACK_TYPES
            }
        self.gates = {fb: PreferenceGate(params.pair_dim, params.memory, name=f"pair_{fb}") for fb in FEEDBACK_TYPES}
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

    def diagnostic_names(self) -> Tuple[str, ...]:
        names = ("purification_entropy", "pooling_entropy")
        if self.params.memory:
            names += ("slot_cosine", "read_entropy")
            if self.params.triplet_loss:
                names += ("triplet_coverage",)
        return names

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
        for fb in FEEDBACK_TYPES:
            attributes, mask = emb.sequence(features, fb, with_gap=False)  # [B, T, N, E], zero at pads
            gap = emb.lookup(GAP_TABLE, features[self.spec.history_gap(fb)])
            gap = gap * tf.cast(mask, gap.dtype)[:, :, tf.newaxis]
            e_x = emb.item_vectors(attributes + gap[:, :, tf.newaxis, :])  # e_c, e_u, e_l, e_d
            O_x, attention = self.encoders[fb](e_x, mask)  # eq. 1-2
            item_id = features[self.spec.history(fb, ITEM_ID)]
            encoded[fb] = EncodedSequence(O_x, attention, emb.item_vectors(attributes), mask, item_id)
        return encoded

    def purified(self, e_user, e_item, encoded: Mapping[str, EncodedSequence]) -> ShortTerm:
        """Eq. 3-7: target-aware pooling of each encoded sequence, then the orthogonal mapping."""
        query = tf.concat([e_user, e_item], axis=-1)
        pooled = {fb: self.encoders[fb](seq.O_x, seq.mask, query, e_item) for fb, seq in encoded.items()}  # eq. 3-5
        f = {fb: f_x for fb, (f_x, _) in pooled.items()}
        f_o = dict(f)
        if self.params.purification:
            for implicit, explicit in PURIFIED_BY.items():
                f_o[implicit] = orthogonal_map(f[implicit], f[explicit])  # eq. 6-7
        alpha = {fb: alpha_x for fb, (_, alpha_x) in pooled.items()}
        return ShortTerm(e_user, e_item, dict(encoded), alpha, f, f_o)

    def attention_diagnostics(self, short: ShortTerm) -> Dict[str, tf.Tensor]:
        """Mean normalised entropy of eq. 1-2's self-attention (real query rows) and of eq. 4's
        pooling, each the mean over the feedback sequences in which some user of the batch has two
        or more items (the others have no attention to speak of)."""
        purification, pooling, present = [], [], []
        for fb, seq in short.encoded.items():
            real_rows = seq.mask[:, tf.newaxis, :, tf.newaxis] & seq.mask[:, tf.newaxis, tf.newaxis, :]
            purification.append(normalized_entropy(seq.attention, real_rows))
            pooling.append(normalized_entropy(short.alpha[fb], seq.mask))
            present.append(tf.reduce_any(tf.reduce_sum(tf.cast(seq.mask, tf.int32), axis=1) >= 2))
        present = tf.cast(tf.stack(present), tf.float32)

        def mean_over_present(values):
            return tf.math.divide_no_nan(tf.reduce_sum(tf.stack(values) * present), tf.reduce_sum(present))

        return {"purification_entropy": mean_over_present(purification), "pooling_entropy": mean_over_present(pooling)}

    # ---- 3.4 and 3.6 ---------------------------------------------------------------------------
    def long_term(self, short: ShortTerm, training: bool, losses: bool = True):
        """(r, triplet terms, diagnostics): r per memory (eq. 8-11) and the write (eq. 12, training
        only); with ``losses`` also the triplet terms (eq. 17-19) and the memory's diagnostics."""
        r, terms, diagnostics = {}, {}, {}
        if not self.params.memory:
            return r, terms, diagnostics
        encoded = short.encoded
        mining = self.params.triplet_loss and losses
        accesses, pools = {}, {}
        if mining:  # each user's own pools, an item in both of a pair's sequences skipped from both
            for fb in TRIPLET_PAIRS:
                other = TRIPLET_NEGATIVE[fb]
                pools[fb], pools[other] = own_pools(
                    encoded[fb].mask, encoded[fb].item_id, encoded[other].mask, encoded[other].item_id
                )
        for fb in FEEDBACK_TYPES:
            writes = tf.reduce_any(encoded[fb].mask, axis=1)  # users with at least one item of this type
            samples = None
            if mining:
                negative = TRIPLET_NEGATIVE[fb]
                samples = TripletSamples(encoded[fb].items, pools[fb], encoded[negative].items, pools[negative])
            accesses[fb] = self.memories[fb](short.f_o[fb], short.e_user, writes, samples, training=training)
            r[fb] = tf.cast(accesses[fb].r, short.e_user.dtype)
            if mining:
                terms[f"triplet_{fb}"] = accesses[fb].triplet
        if losses:
            read_weights = tf.stack([a.read_weights for a in accesses.values()])  # [4, B, m]
            diagnostics = {
                "slot_cosine": tf.reduce_mean([mean_slot_cosine(a.memory) for a in accesses.values()]),
                "read_entropy": normalized_entropy(read_weights, tf.ones_like(read_weights, tf.bool)),
            }
            if mining:
                covered = tf.stack([a.has_triplet for a in accesses.values()])  # [4, B]
                diagnostics["triplet_coverage"] = tf.reduce_mean(tf.cast(covered, tf.float32))
        return r, terms, diagnostics

    # ---- 3.5 -----------------------------------------------------------------------------------
    def forward(self, features, training=False, losses=True):
        short = self.short_term(features)
        r, terms, memory_diagnostics = self.long_term(short, training, losses)
        context = flatten_fields(self.embeddings.context(features)) if self.params.context else None
        logit = self._logit(short, r, context, training)
        if not losses:
            return ModelOutput(logit=logit)
        diagnostics = {**self.attention_diagnostics(short), **memory_diagnostics}
        return ModelOutput(logit=logit, aux_losses=terms, diagnostics=diagnostics)

    def _logit(self, short: ShortTerm, r, context, training):
        U = [self.gates[fb](short.f_o[fb], r.get(fb)) for fb in FEEDBACK_TYPES]  # eq. 13
        R_cross = tf.concat(U, axis=-1)  # eq. 14
        parts = [short.e_user, short.e_item, *(short.f_o[fb] for fb in FEEDBACK_TYPES), *(r[fb] for fb in r), R_cross]
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
        # every field repeated, so the tuple stays consistent; what only the losses and diagnostics
        # read (attention, items, item_id) has no consumer here and is pruned from the serving graph
        encoded = {fb: EncodedSequence(*map(repeat, seq)) for fb, seq in self.encoded_sequences(user_features).items()}
        short = self.purified(repeat(flatten_fields(emb.user(user_features))), e_item, encoded)
        r, _, _ = self.long_term(short, training=False, losses=False)
        context = repeat(flatten_fields(emb.context(user_features))) if self.params.context else None
        return probability(self._logit(short, r, context, training=False))
