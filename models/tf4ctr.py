"""TF4CTR: Twin Focus Framework for CTR prediction (Li, Ru, Zhang, et al., arXiv:2405.03167).

Paper: /work/shared/papers/TF4CTR.txt, section III; its open points are closed as docs/models.md "TF4CTR"
records, with defaults checked against the authors' code (github.com/salmon1802/TF4CTR, ``TF4CTRv2.py``).

Input (III-B): ``h = [e_1, ..., e_f]`` [B, D = f*d], the f fields being every user field, every
target-item field, hour and weekday, and each behaviour sequence mean-pooled per attribute over its
real positions (the gap embedding added per position, as in the DNN baseline).

* SSEM (III-C) gives the inputs of the two encoders, ``ssem``:
  - ``ser`` eq. 3   ``h_es = E_es X`` (easy width d/2), ``h_hs = E_hs X`` (width d): two table sets;
  - ``gm``  eq. 4   ``g = sigmoid(Gate(h))``, Gate an MLP [D/4] -> 1; ``h_es = g h``, ``h_hs = (1-g) h``;
  - ``moe`` eq. 5   ``g_1k, g_2k = softmax(Gate_k(h))`` (MLP [D/4] -> 2), ``m_j = EX_j(h)`` (MLP
    [D/2, D]), ``h_es = g_11 m_1 + g_12 m_2``, ``h_hs = g_21 m_1 + g_22 m_2``;
  - ``share`` (the paper's ablation without SSEM): ``h_es = h_hs = h``.
* Differentiated encoders (III-D, eq. 6): ``hat_h_es = MLP_s(h_es)``, ``hat_h_hs = MLP_c(h_hs)``,
  ``z_s = W_s hat_h_es``, ``z_c = W_c hat_h_hs`` (each encoder its own logit layer). Both encoders are
  constructor arguments (any layer ``encoder(x, training=...) -> [B, H]``), MLPs by default.
* DFM (III-F), ``dfm``:
  - ``wsf`` eq. 8   ``logit = w_s z_s + w_c z_c``, w_s, w_c scalars initialised to 0.5;
  - ``vf``  eq. 9   ``pi_s = W_es hat_h_es``, ``pi_c = W_hs hat_h_hs``,
    ``p = softmax((pi + g) / tau)`` with Gumbel(0, 1) noise g in training only, ``logit = p_s z_s + p_c z_c``;
  - ``cf``  eq. 10  ``logit = W_cf [hat_h_es || hat_h_hs] + b_cf``;
  - ``moef`` eq. 11 ``g = softmax(gate([hat_h_es || hat_h_hs]))``, ``m_k = ex_k([..])``, ``logit = g_1 m_1 + g_2 m_2``;
  - ``sum`` (the paper's ablation without DFM, III-H): ``logit = z_s + z_c``.
* TF loss (III-E, eq. 7) as the authors' code computes it, negatives included (``twin_focus_loss``):
  ``p_t = y p + (1-y)(1-p)``; ``L_simple = mean(BCE(p_s, y) (c + p_t_s)^gamma)``,
  ``L_complex = mean(BCE(p_c, y) ((2-c) - p_t_c)^gamma)``; logged as ``tf_easy`` (weight alpha) and
  ``tf_hard`` (weight 1-alpha), so ``L = BCE(fused) + alpha L_simple + (1-alpha) L_complex`` (eq. 12)
  plus the embedding L2 of every table.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from contract.model_params import TF4CTRParams
from models.base import CTRModel, ModelOutput
from models.inputs import FeatureEmbeddings
from models.layers import MLP
from contract.features import CONTEXT_FIELDS
from contract.feature_spec import FeatureSpec


# ---- loss (eq. 7) --------------------------------------------------------------------------------
def twin_focus_loss(
    labels: tf.Tensor, z_s: tf.Tensor, z_c: tf.Tensor, c: float, gamma: float
) -> Tuple[tf.Tensor, tf.Tensor]:
    """(L_simple, L_complex) of eq. 7, unweighted batch means, float32.

    labels [B] in {0, 1}; z_s, z_c [B] the logits of the simple and complex encoders. As in the
    authors' code: ``p_t = y p + (1-y)(1-p)``, ``L_simple = mean(BCE(p_s, y) * (c + p_t_s)^gamma)``,
    ``L_complex = mean(BCE(p_c, y) * ((2-c) - p_t_c)^gamma)``; with c = 1 the latter is focal loss.
    """
    y = tf.cast(labels, tf.float32)
    z_s, z_c = tf.cast(z_s, tf.float32), tf.cast(z_c, tf.float32)

    def bce_and_p_t(z):
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)  # = BCE(sigmoid(z), y), stable
        p = tf.sigmoid(z)
        return bce, y * p + (1.0 - y) * (1.0 - p)

    bce_s, p_t_s = bce_and_p_t(z_s)
    bce_c, p_t_c = bce_and_p_t(z_c)
    L_simple = tf.reduce_mean(bce_s * tf.pow(c + p_t_s, gamma))
    L_complex = tf.reduce_mean(bce_c * tf.pow((2.0 - c) - p_t_c, gamma))
    return L_simple, L_complex


# ---- input fields (III-B) ------------------------------------------------------------------------
def num_fields(spec: FeatureSpec, sequences: Sequence[str]) -> int:
    """f: user, target-item and context fields, plus one pooled field per sequence and attribute."""
    items = len(spec.item_fields)
    return len(spec.user_fields) + items + len(CONTEXT_FIELDS) + len(sequences) * items


_UNIFORM_FLOOR = 1e-20  # keeps log(u) finite for the Gumbel noise (pi is float32)


# ---- dynamic fusion (III-F) ----------------------------------------------------------------------
# Every fusion: call(z_s, z_c, hat_h_es, hat_h_hs, training) -> fused logit [B] float32.
class WeightedSumFusion(tf_keras.layers.Layer):
    """WSF, eq. 8: ``w_s z_s + w_c z_c`` with global scalars initialised to 0.5."""

    def __init__(self, name: str = "WSF"):
        super().__init__(name=name, dtype="float32")

    def build(self, input_shape):
        init = tf_keras.initializers.Constant(0.5)
        self.w_s = self.add_weight(name="w_s", shape=(), initializer=init, dtype=tf.float32)
        self.w_c = self.add_weight(name="w_c", shape=(), initializer=init, dtype=tf.float32)
        super().build(input_shape)

    def call(self, z_s, z_c, hat_h_es, hat_h_hs, training=False):
        return self.w_s * z_s + self.w_c * z_c


class VotingFusion(tf_keras.layers.Layer):
    """VF, eq. 9: a Gumbel-softmax vote between the two logits.

    ``pi_k = W_k hat_h_k`` are the vote logits (the paper's log(pi_k); the authors' code feeds them
    to ``F.gumbel_softmax`` as logits). Training: ``p = softmax((pi + g) / tau)``, g ~ Gumbel(0, 1);
    inference: the noiseless ``softmax(pi / tau)``, so serving is deterministic (docs/models.md).
    """

    def __init__(self, tau: float, name: str = "VF"):
        super().__init__(name=name, dtype="float32")
        self.tau = tau
        self.W_es = tf_keras.layers.Dense(1, dtype="float32", name="W_es")
        self.W_hs = tf_keras.layers.Dense(1, dtype="float32", name="W_hs")

    def vote(self, hat_h_es, hat_h_hs, training=False) -> tf.Tensor:
        """[B, 2]: (p_s, p_c)."""
        pi = tf.concat([self.W_es(hat_h_es), self.W_hs(hat_h_hs)], axis=-1)  # [B, 2] float32
        if training:
            u = tf.random.uniform(tf.shape(pi), minval=_UNIFORM_FLOOR, maxval=1.0, dtype=pi.dtype)  # (0, 1)
            pi = pi - tf.math.log(-tf.math.log(u))  # + g, g = -log(-log(u)) ~ Gumbel(0, 1)
        return tf.nn.softmax(pi / self.tau, axis=-1)

    def call(self, z_s, z_c, hat_h_es, hat_h_hs, training=False):
        p = self.vote(hat_h_es, hat_h_hs, training=training)
        return p[:, 0] * z_s + p[:, 1] * z_c


class ConcatenationFusion(tf_keras.layers.Layer):
    """CF, eq. 10: ``W_cf [hat_h_es || hat_h_hs] + b_cf``."""

    def __init__(self, name: str = "CF"):
        super().__init__(name=name, dtype="float32")
        self.W_cf = tf_keras.layers.Dense(1, dtype="float32", name="W_cf")

    def call(self, z_s, z_c, hat_h_es, hat_h_hs, training=False):
        return tf.squeeze(self.W_cf(tf.concat([hat_h_es, hat_h_hs], axis=-1)), axis=-1)


class MoEFusion(tf_keras.layers.Layer):
    """MoEF, eq. 11: ``softmax(gate([..])) . (ex_1([..]), ex_2([..]))``, linear gate and experts."""

    def __init__(self, name: str = "MoEF"):
        super().__init__(name=name, dtype="float32")
        self.gate = tf_keras.layers.Dense(2, dtype="float32", name="gate")
        self.ex = tf_keras.layers.Dense(2, dtype="float32", name="ex")  # m_1, m_2 side by side

    def call(self, z_s, z_c, hat_h_es, hat_h_hs, training=False):
        both = tf.concat([hat_h_es, hat_h_hs], axis=-1)
        g = tf.nn.softmax(self.gate(both), axis=-1)
        return tf.reduce_sum(g * self.ex(both), axis=-1)


class SumFusion(tf_keras.layers.Layer):
    """No DFM (III-H): ``z_s + z_c``."""

    def __init__(self, name: str = "sum_fusion"):
        super().__init__(name=name, dtype="float32")

    def call(self, z_s, z_c, hat_h_es, hat_h_hs, training=False):
        return z_s + z_c


FUSES_ENCODER_LOGITS = ("wsf", "vf", "sum")  # the fusions that read z_s and z_c (CF, MoEF read hat_h)


# ---- the model -----------------------------------------------------------------------------------
class TF4CTR(CTRModel):
    """TF4CTR with an MLP simple and complex encoder (the paper's configuration).

    Deviations from the paper, and why:

    * Fields: the paper's inputs are flat categorical fields; here behaviour sequences enter as extra
      fields, mean-pooled per attribute over real positions with the gap embedding added (docs/models.md);
      ``sequences: []`` leaves them out (the paper's inputs).
    * SER: E_hs is the base class's table set (width d), E_es a second full set (user, item, context
      and gap tables) of width ``ser_easy_embedding_dim`` (d // 2 by default, as in the authors' code).
    * TF loss: eq. 7 only writes the positive-sample form; implemented with ``p_t`` for negatives as
      the authors' code does (docs/models.md). BCE is taken from the logits (numerically stable) rather
      than from probabilities as in their PyTorch code; equal up to float rounding.
    * VF: eq. 9 takes log(pi_k) of a linear output, undefined when it is negative; the projections are
      used as the vote logits, as in the authors' code. Gumbel noise is sampled only when
      ``training=True``; inference uses the noiseless ``softmax(pi / tau)`` (the authors' code samples
      at inference too, which makes serving non-deterministic; docs/models.md). W_hs is sized by the complex
      encoder's output (the authors' code sizes it by the simple one's; identical in their configs).
    * GM / MoE SSEM and MoEF follow the authors' code where the paper is loose: Gate = MLP [D/4] -> 1
      (sigmoid); MMoE experts MLP [D/2, D] (ReLU, batch norm, dropout on every layer) and gates
      MLP [D/4] -> 2 (softmax); MoEF gate and experts are single linear layers (the paper's section
      IV-A expert [400, 200] / gate [400, 100] sizes are not what the code runs).
    * Logit layers W_s, W_c (eq. 6) have a bias, as the authors' ``nn.Linear``.
    * Embedding L2: ``embedding_l2 * sum(E^2)`` per table (tf_keras L2) with 0.01 (docs/models.md);
      FuxiCTR applies ``(lambda / 2) * ||E||^2``, so 0.005 here would match the authors' scale exactly.
    * Not in the model: gradient-norm clipping (Algorithm 1 line 13, max norm 10 in FuxiCTR) and
      learning-rate decay on plateau are trainer matters; Glorot-uniform initialisation (Keras) instead
      of FuxiCTR's Xavier-normal.

    The TF loss needs the labels: ``forward`` returns the encoder logits z_s, z_c as named outputs
    and ``label_losses`` computes the two terms from them (a serving call needs neither).
    """

    Params = TF4CTRParams

    def __init__(
        self,
        spec: FeatureSpec,
        vocab_sizes: Mapping[str, int],
        params: TF4CTRParams,
        name: str = "tf4ctr",
        *,
        simple_encoder: Optional[tf_keras.layers.Layer] = None,
        complex_encoder: Optional[tf_keras.layers.Layer] = None,
    ):
        """``simple_encoder`` / ``complex_encoder`` replace MLP_s / MLP_c: any layer mapping
        [B, D_in] to [B, H] with a ``training`` argument (e.g. another model's interaction encoder)."""
        super().__init__(spec, vocab_sizes, params, name=name)
        p = params
        self.sequences = spec.feedback_types if p.sequences is None else p.sequences
        unknown = [kind for kind in self.sequences if kind not in spec.feedback_types]
        if unknown:
            raise ValueError(f"{name}: sequences {unknown} are not feedback types of the feature spec {list(spec.feedback_types)}")
        self.num_fields = num_fields(spec, self.sequences)
        D = self.num_fields * self.embedding_dim
        mlp = dict(dropout=p.dropout, batch_norm=p.batch_norm)

        # SSEM (III-C); self.embeddings (base class) is E of GM/MoE/share and E_hs of SER
        if p.ssem == "ser":
            self.easy_embedding_dim = p.ser_easy_embedding_dim or max(1, self.embedding_dim // 2)
            self.E_es = FeatureEmbeddings(spec, vocab_sizes, self.easy_embedding_dim, l2=p.embedding_l2,
                                          init_std=p.embedding_init_std, name="E_es")
        elif p.ssem == "gm":
            self.Gate = MLP((max(1, D // 4),), output_units=1, name="Gate", **mlp)
        elif p.ssem == "moe":
            self.EX = [MLP((max(1, D // 2), D), name=f"EX_{j}", **mlp) for j in (1, 2)]
            self.Gates = [MLP((max(1, D // 4),), output_units=2, name=f"Gate_{k}", **mlp) for k in (1, 2)]

        # differentiated encoders (III-D, eq. 6)
        self.MLP_s = simple_encoder if simple_encoder is not None else MLP(p.simple_units, name="MLP_s", **mlp)
        self.MLP_c = complex_encoder if complex_encoder is not None else MLP(p.mlp_units, name="MLP_c", **mlp)
        self.uses_encoder_logits = p.tf_loss or p.dfm in FUSES_ENCODER_LOGITS
        if self.uses_encoder_logits:
            self.W_s = tf_keras.layers.Dense(1, dtype="float32", name="W_s")
            self.W_c = tf_keras.layers.Dense(1, dtype="float32", name="W_c")

        # DFM (III-F)
        self.fusion = {
            "wsf": WeightedSumFusion,
            "vf": lambda: VotingFusion(p.vf_tau),
            "cf": ConcatenationFusion,
            "moef": MoEFusion,
            "sum": SumFusion,
        }[p.dfm]()

    def loss_weights(self) -> Dict[str, float]:
        if not self.params.tf_loss:
            return {}
        return {"tf_easy": self.params.alpha, "tf_hard": 1.0 - self.params.alpha}  # eq. 7

    def sample_selection(self, features, training=False) -> Tuple[tf.Tensor, tf.Tensor]:
        """SSEM (III-C): (h_es, h_hs), the inputs of the simple and complex encoders."""
        def flat(embeddings):
            fields = embeddings.pooled_fields(features, self.sequences)  # [B, f, E]
            return tf.reshape(fields, [tf.shape(fields)[0], self.num_fields * embeddings.dim])

        ssem = self.params.ssem
        if ssem == "ser":  # eq. 3
            return flat(self.E_es), flat(self.embeddings)
        h = flat(self.embeddings)
        if ssem == "gm":  # eq. 4
            g = tf.sigmoid(self.Gate(h, training=training))  # [B, 1]
            return g * h, (1.0 - g) * h
        if ssem == "moe":  # eq. 5
            m = tf.stack([ex(h, training=training) for ex in self.EX], axis=1)  # [B, 2, D]
            g_1, g_2 = (tf.nn.softmax(gate(h, training=training), axis=-1) for gate in self.Gates)  # [B, 2]
            return tf.einsum("bj,bjd->bd", g_1, m), tf.einsum("bj,bjd->bd", g_2, m)
        return h, h  # share: no SSEM

    def forward(self, features, training=False, losses=True):
        h_es, h_hs = self.sample_selection(features, training=training)
        hat_h_es = self.MLP_s(h_es, training=training)  # eq. 6
        hat_h_hs = self.MLP_c(h_hs, training=training)
        z_s = z_c = None
        if self.uses_encoder_logits:
            z_s = tf.squeeze(self.W_s(hat_h_es), axis=-1)  # [B] float32
            z_c = tf.squeeze(self.W_c(hat_h_hs), axis=-1)
        logit = self.fusion(z_s, z_c, hat_h_es, hat_h_hs, training=training)  # eq. 8-11
        outputs = {"z_s": z_s, "z_c": z_c} if self.uses_encoder_logits else {}
        return ModelOutput(logit=logit, outputs=outputs)

    def label_losses(self, output, labels):
        if not self.params.tf_loss:
            return {}
        L_simple, L_complex = twin_focus_loss(labels, output.outputs["z_s"], output.outputs["z_c"], self.params.c, self.params.gamma)
        return {"tf_easy": L_simple, "tf_hard": L_complex}  # eq. 7
