"""The models' hyper-parameters: one pydantic ``Params`` class per model, and ``PARAMS``.

TensorFlow-free, so the config is validated at load (``contract.config``) without building a
model. Each model module takes its ``Params`` from here (``CTRModel.Params``); the comments
name the paper's symbols each field sets.
"""
from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple, Type

import pydantic


class ModelParams(pydantic.BaseModel):
    """Hyper-parameters every model has; a model's own ``Params`` subclasses this."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    embedding_dim: Optional[int] = pydantic.Field(None, ge=1)  # default: features.embedding_dim
    # regularisation (docs/models.md "Training defaults (v2)"): TF4CTR's published settings, the
    # default of every model since they raised every model measured on both benchmarks; 0 and 0
    # (``<model>_noreg`` in benchmarks/quality.py) is the v1 trainer's
    embedding_l2: float = pydantic.Field(0.01, ge=0)  # tf_keras L2 on every embedding table
    # embedding tables start normal(0, std) (FuxiCTR's 1e-4; docs/models.md "Training defaults (v2)");
    # None keeps Keras' uniform(-0.05, 0.05) of the v1 trainer
    embedding_init_std: Optional[float] = pydantic.Field(1e-4, gt=0)
    dropout: float = pydantic.Field(0.1, ge=0, lt=1)  # in the prediction MLP (TF4CTR: every MLP)
    mlp_units: Tuple[int, ...] = (256, 128)  # the prediction MLP


class SequenceInputParams(ModelParams):
    """The baselines' sequence inputs, narrowable to a reference library's (FuxiCTR on ml1m-seq:
    the click sequence of item id and first genre, no time gaps; ``peers/README.md``)."""

    sequence_fields: Optional[Tuple[str, ...]] = None  # item fields of each position; None: all
    sequence_gap: bool = True  # the time-gap embedding added to each position (docs/models.md)


class DNNParams(SequenceInputParams):
    sequences: Optional[Tuple[str, ...]] = None  # feedback types pooled; None: all of the spec's


class DINParams(SequenceInputParams):
    attention_units: Tuple[int, ...] = (64, 32)
    attention_activation: Literal["sigmoid", "relu", "dice"] = "sigmoid"


class FADIDNParams(ModelParams):
    """FADIDN hyper-parameters (docs/models.md "FADIDN"); the paper's values where it gives them."""

    num_heads: int = pydantic.Field(2, ge=1)  # h of eq. 2-3 (must divide the embedding dimension)
    gate: bool = True  # eq. 1 attribute gate; off (FADIDN-G): keys are ungated, K = E_cp^n W_K
    gate_units: Tuple[int, ...] = (256,)  # hidden layers of the gate; its output layer has width E
    # eq. 2: "dot" is the paper's profile attention; "mean" is an ablation (not in the paper) that
    # replaces it by masked mean pooling over the positions, the same for every user-field row
    # (then there are no keys, so there is no gate either: it needs gate=False)
    attention: Literal["dot", "mean"] = "dot"
    ffn_units: Tuple[int, ...] = (256, 128)  # point-wise FFN of eq. 4 (width of f_c, f_v = last)
    context: bool = False  # also feed hour/weekday to the prediction MLP (left out by design: docs/models.md)
    contrastive: bool = True  # section 2.4 InfoNCE term (FADIDN-CL when off); logged as `contrastive`
    # docs/models.md "FADIDN": lambda, tau and detach_items chosen by validation AUC on
    # ml1m-seq seed 0 (benchmarks/results/quality.md, "FADIDN contrastive settings"): lambda 0.01
    lambda_cl: float = pydantic.Field(0.01, ge=0)  # lambda of eq. 7
    tau: float = pydantic.Field(0.2, gt=0)  # InfoNCE temperature of eq. 5
    # stop the gradient of L_cl at the item side of eq. 5 (positives and both kinds of negatives):
    # L_cl then moves only the anchor path (f_c and its projection), not the item embeddings
    detach_items: bool = False
    num_positives: int = pydantic.Field(4, ge=1)  # k: top-k click items ...
    eta: float = pydantic.Field(0.0, ge=-1, lt=1)  # ... whose cosine to the anchor is > eta
    num_hard_negatives: int = pydantic.Field(4, ge=0)  # q: top-q most similar unclick items
    num_negatives: int = pydantic.Field(64, ge=1)  # K: hard + random negatives in total

    @pydantic.model_validator(mode="after")
    def _negatives_include_the_hard_ones(self):
        if self.num_negatives < self.num_hard_negatives:
            raise ValueError(
                f"num_negatives (K={self.num_negatives}) counts the hard negatives "
                f"(q={self.num_hard_negatives}), so it must be >= q"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _mean_pooling_has_no_keys_to_gate(self):
        if self.attention == "mean" and self.gate:
            raise ValueError("attention='mean' has no keys for the eq. 1 gate to weight: set gate=False with it")
        return self


class CAMNParams(ModelParams):
    embedding_dim: Optional[int] = pydantic.Field(18, ge=1)  # d = 18, the paper's (section 3.1)
    # "dot": eq. 4-5; "mean": every real key weighs the same (the known-answer ablation that
    # replaces the modified Transformer's attention by mean pooling)
    attention: Literal["dot", "mean"] = "dot"
    sequence_length: Optional[int] = pydantic.Field(20, ge=1)  # most recent clicks used; None: all
    q: Optional[int] = pydantic.Field(None, ge=1)  # keepTopq of eq. 2-3; None: ceil(k / 2)
    router: bool = True  # eq. 1-3; False: P = 1 (the paper's CAMN-loss ablation)
    diversity_loss: bool = True  # eq. 7; False: not computed (the paper's CAMN-route ablation)
    alpha: float = pydantic.Field(1e-4, ge=0)  # weight of the diversity loss, eq. 8
    attention_units: Tuple[int, ...] = (64, 32)  # DMIN interest extractor's activation unit
    # residual connections around eq. 5 and eq. 6 (models/camn.py point 6); False: eq. 5-6 exactly
    residual: bool = True


# DUMN's triplet sample mining (models/dumn_triplet.py): the paper's hardest pair, or every pair
TripletMining = Literal["hardest", "all"]


class DUMNParams(ModelParams):
    """DUMN hyper-parameters (docs/models.md "DUMN"); the paper's values where it gives them."""

    num_heads: int = pydantic.Field(2, ge=1)  # H of eq. 1-2
    head_dim: Optional[int] = pydantic.Field(None, ge=1)  # per-head width; default N*E // num_heads
    purification: bool = True  # eq. 6-7 orthogonal mapping; off (DUMN-FP): f_oc = f_c, f_ou = f_u
    # eq. 3 also sees e_item (.) o_j, so the pooling can pick the positions that match the target
    # (models/dumn.py); False: eq. 3 as printed, where e_item only shifts every position's score alike
    pooling_interaction: bool = True
    memory: bool = True  # eq. 8-12 user memory network; off (DUMN-UMN): no r, no write, no triplet
    memory_slots: int = pydantic.Field(64, ge=1)  # m (paper: 256)
    slot_dim: int = pydantic.Field(32, ge=1)  # Z (paper: 64)
    controller_units: int = pydantic.Field(512, ge=1)  # width of the FFN of eq. 8
    key_strength_init: float = pydantic.Field(10.0, gt=1)  # beta = 1 + softplus(.) at init, read and write
    pair_dim: int = pydantic.Field(32, ge=1)  # common width of the gated halves of eq. 13
    context: bool = False  # also feed hour/weekday to the prediction MLP (the paper has no context)
    triplet_loss: bool = True  # eq. 17-20 (DUMN-TL when off); needs memory
    triplet_margin: float = pydantic.Field(0.5, ge=0)
    # "all": the hinge averaged over every (positive, negative) pair of the user's pools; "hardest":
    # eq. 19's hardest pair, which stays at the margin on noisy click/unclick pools (models/dumn.py)
    triplet_mining: TripletMining = "all"
    triplet_click_weight: float = pydantic.Field(1.0, ge=0)  # L_c
    triplet_unclick_weight: float = pydantic.Field(1.0, ge=0)  # L_u
    triplet_like_weight: float = pydantic.Field(1.0, ge=0)  # L_l
    triplet_dislike_weight: float = pydantic.Field(1.0, ge=0)  # L_d


class TF4CTRParams(ModelParams):
    """TF4CTR hyper-parameters (docs/models.md "TF4CTR"): the authors' ML-1M best configuration."""

    ssem: Literal["ser", "gm", "moe", "share"] = "ser"  # III-C; "share" = no SSEM
    # feedback types pooled into fields (III-B); None: all of the spec's; (): none, the paper's
    # flat categorical fields (``tf4ctr_ref``, the official code's inputs on ml1m-seq)
    sequences: Optional[Tuple[str, ...]] = None
    dfm: Literal["wsf", "vf", "cf", "moef", "sum"] = "wsf"  # III-F; "sum" = no DFM
    ser_easy_embedding_dim: Optional[int] = pydantic.Field(None, ge=1)  # width of E_es; None: d // 2
    tf_loss: bool = True  # eq. 7; off: only BCE(fused) (+ L2) trains the model
    alpha: float = pydantic.Field(0.25, ge=0, le=1)  # weight of tf_easy; tf_hard gets 1 - alpha
    c: float = pydantic.Field(0.8, ge=0, le=1)  # eq. 7; m = 2 - c
    gamma: float = pydantic.Field(2.0, ge=0)  # eq. 7 modulating exponent
    simple_units: Tuple[int, ...] = (400,)  # MLP_s
    mlp_units: Tuple[int, ...] = (400, 400, 400)  # MLP_c, the complex encoder ("main deep layers")
    batch_norm: bool = True  # in MLP_s, MLP_c and the SSEM MLPs; so is ``dropout`` (its 0.1 is the default's)
    vf_tau: float = pydantic.Field(0.8, gt=0)  # Gumbel-softmax temperature of VF

    @pydantic.model_validator(mode="after")
    def _easy_width_only_for_ser(self):
        if self.ser_easy_embedding_dim is not None and self.ssem != "ser":
            raise ValueError(f"ser_easy_embedding_dim sets the width of SER's easy tables; ssem is {self.ssem!r}")
        return self


# model name (an ``architecture`` of ``training.models``) -> its Params class
PARAMS: Dict[str, Type[ModelParams]] = {
    "dnn": DNNParams,
    "din": DINParams,
    "fadidn": FADIDNParams,
    "camn": CAMNParams,
    "dumn": DUMNParams,
    "tf4ctr": TF4CTRParams,
}
