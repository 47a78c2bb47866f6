"""The project's contract, at the bottom of the house: what every other package agrees on.

TensorFlow-free and importing nothing else of the project: the config schema (``config``), the
models' hyper-parameters (``model_params``), the feature vocabulary (``features``) and the
feature specification built on it (``feature_spec``), the serving contract (``serving``), the
trainer's arguments (``trainer_args``) and AUC (``auc``).
"""
