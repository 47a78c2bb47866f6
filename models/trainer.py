"""TFX Trainer module: ``run_fn`` (referenced by name as ``models.trainer.run_fn``).

Reads the transformed examples through the tfxio dataset factory, trains the model named in
``custom_config`` under ``tf.distribute.MirroredStrategy`` (all GPUs when there are any, the CPU
otherwise) or, with ``training.workers`` > 1, on several workers (``models.multiworker``), stops
early on the eval split's AUC, and exports the serving SavedModel and the warm-start files
(``models.warm_start``). With ``training.warm_start``, the model starts from the warm-start files
of its latest blessed version (``fn_args.base_model``), when there is one.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
import logging
import time
from typing import Dict, Optional

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras
from tfx_bsl.public import tfxio

from contract.trainer_args import TrainerArgs
from models import multiworker, registry, warm_start
from models.export import export_serving_model
from contract.features import LABEL
from contract.feature_spec import FeatureSpec

TRAINING_STATS = "training_stats.json"


def vocabulary_sizes(tft_output, spec: FeatureSpec) -> Dict[str, int]:
    return {f: tft_output.vocabulary_size_by_name(spec.vocabulary_name(f)) for f in spec.scalar_fields}


def shuffle_buffer_size(training: dict, batch_size: int) -> int:
    """Examples in the training split's shuffle buffer (``shuffle_buffer_examples``, else
    ``shuffle_buffer_batches`` batches)."""
    return training.get("shuffle_buffer_examples") or training["shuffle_buffer_batches"] * batch_size


def make_dataset(fn_args, files, tft_output, batch_size: int, shuffle_buffer: Optional[int], seed: int) -> tf.data.Dataset:
    """(features, label) batches of transformed examples, one pass (Keras re-iterates per epoch,
    so a shuffled split is reshuffled every epoch); ``shuffle_buffer`` None: file order."""
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=LABEL, num_epochs=1, shuffle=shuffle_buffer is not None, shuffle_seed=seed,
        shuffle_buffer_size=shuffle_buffer or 1,
    )  # tfxio shuffles the file order and then the records through a buffer reshuffled every pass
    dataset = fn_args.data_accessor.tf_dataset_factory(files, options, tft_output.transformed_metadata.schema)
    sharding = tf.data.Options()  # between workers (models.multiworker): by element, whatever the file count
    sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(sharding).prefetch(tf.data.AUTOTUNE)


def distribution_strategy(devices: Optional[list] = None) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs (NCCL all-reduce), or over ``devices``; the CPU when there
    is no GPU. CPU replicas reduce on one device: CPU collectives cannot all-reduce the sparse
    (IndexedSlices) embedding gradients, whose sizes differ between replicas."""
    if devices is None and not tf.config.list_logical_devices("GPU"):
        devices = ["/cpu:0"]
    on_cpu = devices is not None and all("cpu" in d.lower() for d in devices)
    cross_device_ops = tf.distribute.ReductionToOneDevice() if on_cpu else None
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross_device_ops)


def schedule_callbacks(training: dict) -> list:
    """Early stopping on validation AUC (the best epoch's weights are kept) and, with
    ``reduce_lr_on_plateau``, the learning rate cut by that factor after each epoch without a gain.
    A cut does not reset the patience count: as in FuxiCTR, training stops after
    ``early_stopping_patience`` epochs without a gain, cut or not."""
    callbacks = [tf_keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=training["early_stopping_patience"], restore_best_weights=True
    )]
    if training.get("reduce_lr_on_plateau"):
        callbacks.append(tf_keras.callbacks.ReduceLROnPlateau(
            monitor="val_auc", mode="max", factor=training["reduce_lr_on_plateau"], patience=0, min_delta=0.0,
            min_lr=training.get("min_learning_rate", 0.0), verbose=1,
        ))
    return callbacks


def make_optimizer(training: dict) -> tf_keras.optimizers.Optimizer:
    """Adam at ``learning_rate``, gradients clipped to ``gradient_clip_norm`` (global norm, after
    the replicas' gradients are aggregated), when set."""
    return tf_keras.optimizers.Adam(training["learning_rate"], global_clipnorm=training.get("gradient_clip_norm"))


class ThroughputLogger(tf_keras.callbacks.Callback):
    """Logs each epoch's metrics and the training examples/s after ``warmup_steps`` steps."""

    def __init__(self, batch_size: int, warmup_steps: int = 50):
        super().__init__()
        # the batch hooks read no logs: Keras then hands them over as tensors instead of fetching
        # every metric's value after every step (a sync and a numpy copy per step)
        self._supports_tf_logs = True
        self.batch_size, self.warmup_steps = batch_size, warmup_steps
        self.steps, self.timed_steps, self.timed_seconds, self.start = 0, 0, 0.0, None
        self.epochs = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter() if self.steps >= self.warmup_steps else None

    def on_train_batch_end(self, batch, logs=None):
        if self.start is not None:
            self.timed_seconds += time.perf_counter() - self.start
            self.timed_steps += 1
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.epochs.append(logs)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()))
        logging.info("epoch %d: %s", epoch + 1, shown)
        print(f"[{self.model.name}] epoch {epoch + 1}: {shown}", flush=True)

    @property
    def examples_per_second(self) -> Optional[float]:
        if not self.timed_steps:
            return None
        return self.timed_steps * self.batch_size / self.timed_seconds


def create_variables(model, dataset: tf.data.Dataset) -> None:
    """Every variable of ``model`` and of its optimizer, built on the first batch of ``dataset``
    (call under the strategy's scope). Without this, fit's first step creates them, and
    tf.function traces the training step twice (once to create, once without creating): about
    11 s of a demo-size CAMN Trainer's two minutes."""
    features, labels = next(iter(dataset))
    warm_start.create_variables(model, features, labels)
    model.optimizer.build(model.trainable_variables)


def start_from_base(model, base_model: Optional[str], tft_output, spec: FeatureSpec) -> Optional[dict]:
    """Warm start (``training.warm_start``): restores ``model`` (its variables created:
    ``create_variables``) from the warm-start files beside ``base_model``, the latest blessed
    version's serving directory (None when there is none). Returns the restore summary, or None
    when the model trains from scratch; prints which."""
    if base_model is None:
        print(f"[{model.name}] warm start: no blessed version yet, training from scratch", flush=True)
        return None
    directory = warm_start.directory_of(base_model)
    if not warm_start.exists(directory):
        print(f"[{model.name}] warm start: the blessed version has no warm-start files ({directory}), "
              "training from scratch", flush=True)
        return None
    summary = warm_start.restore(model, directory, tft_output, spec)
    print(f"[{model.name}] warm start from {directory}: {warm_start.describe(summary)}", flush=True)
    return summary


def train(fn_args, strategy: Optional[tf.distribute.Strategy] = None):
    """Trains and exports; returns the trained model (``run_fn`` is this without the return)."""
    args = TrainerArgs.from_custom_config(fn_args.custom_config)
    spec = FeatureSpec.from_dict(args.feature_spec)
    training = args.training.model_dump(exclude={"models"})  # the helpers above read it by key
    name = args.model_name
    tf_keras.utils.set_random_seed(training["seed"])
    if training.get("mixed_precision"):
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    vocab = vocabulary_sizes(tft_output, spec)
    strategy = strategy or distribution_strategy()
    batch = training["batch_size"] * strategy.num_replicas_in_sync
    train_ds = make_dataset(fn_args, fn_args.train_files, tft_output, batch, shuffle_buffer_size(training, batch), training["seed"])
    eval_ds = make_dataset(fn_args, fn_args.eval_files, tft_output, batch, None, training["seed"])
    with strategy.scope():
        model = registry.build(args.architecture, spec, vocab, args.model_params, name=name)
        model.compile(optimizer=make_optimizer(training))
        # on the eval split's first batch (unshuffled: the training order stays the same)
        create_variables(model, eval_ds)
        warm_start_summary = (start_from_base(model, fn_args.base_model, tft_output, spec)
                              if args.training.warm_start else None)
    # train_step/test_step return metric results, already global: Keras' default would sum them
    # again over the workers of a MultiWorkerMirroredStrategy (a training AUC of 1.13 on two)
    model.distribute_reduction_method = "first"
    throughput = ThroughputLogger(batch)
    callbacks = schedule_callbacks(training) + [tf_keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir), throughput]
    started = time.perf_counter()
    model.fit(
        train_ds, validation_data=eval_ds, epochs=training["epochs"],
        steps_per_epoch=training.get("steps_per_epoch"), callbacks=callbacks, verbose=0,
    )
    stats = {
        "model": name,
        "replicas": strategy.num_replicas_in_sync,
        "epochs": throughput.epochs,
        "train_seconds": time.perf_counter() - started,
        "train_examples_per_second": throughput.examples_per_second,
        "warm_start": warm_start_summary,
    }
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_STATS), "w") as handle:
        json.dump(stats, handle, indent=2)
    tf_keras.mixed_precision.set_global_policy("float32")
    export_serving_model(model, tft_output, spec, fn_args.serving_model_dir)
    warm_start.save(model, tft_output, spec, warm_start.directory_of(fn_args.serving_model_dir))
    return model


def run_fn(fn_args) -> None:
    """The Trainer's entry point: trains in this process, or as one worker of the cluster in
    ``TF_CONFIG``, or (``training.workers`` > 1 without ``TF_CONFIG``) on local worker processes."""
    if multiworker.TF_CONFIG in os.environ:
        multiworker.train_as_worker(fn_args, tf.distribute.MultiWorkerMirroredStrategy())
        return
    workers = TrainerArgs.from_custom_config(fn_args.custom_config).training.workers
    if workers > 1:
        multiworker.train_on_local_workers(fn_args, workers)
    else:
        train(fn_args)
