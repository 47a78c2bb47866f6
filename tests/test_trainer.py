"""The training defaults: early stopping on validation AUC, the learning-rate cut on a plateau, clipping, shuffling."""
import pytest
import tensorflow as tf
import tf_keras

from tests import model_harness as h
from models.trainer import create_variables, schedule_callbacks


def _compiled_model(learning_rate: float) -> tf_keras.Model:
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def _learning_rates(training: dict, model: tf_keras.Model, val_aucs) -> list:
    """Feeds the callbacks one epoch end per validation AUC; the learning rate after each epoch."""
    callbacks = schedule_callbacks(training)
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    rates = []
    for epoch, auc in enumerate(val_aucs):
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"val_auc": auc})
        rates.append(float(model.optimizer.learning_rate.numpy()))
        if model.stop_training:
            break
    return rates


def test_plateau_cuts_the_learning_rate_after_each_epoch_without_a_gain():
    model = _compiled_model(1e-3)
    rates = _learning_rates({"early_stopping_patience": 2, "reduce_lr_on_plateau": 0.1}, model,
                            [0.70, 0.72, 0.71, 0.715, 0.73])
    # epochs 3 and 4 do not beat 0.72: each cuts the rate, and the second stops training
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    assert model.stop_training


def test_a_gain_after_a_cut_keeps_the_cut_rate_and_resets_the_patience():
    model = _compiled_model(1e-3)
    rates = _learning_rates({"early_stopping_patience": 2, "reduce_lr_on_plateau": 0.5}, model,
                            [0.70, 0.69, 0.71, 0.72])
    assert rates == pytest.approx([1e-3, 5e-4, 5e-4, 5e-4])
    assert not model.stop_training


def test_without_the_option_the_learning_rate_stays_fixed():
    model = _compiled_model(1e-3)
    rates = _learning_rates({"early_stopping_patience": 1}, model, [0.70, 0.69])
    assert rates == pytest.approx([1e-3, 1e-3])
    assert model.stop_training


def test_the_learning_rate_cuts_stop_at_the_floor():
    model = _compiled_model(1e-3)
    rates = _learning_rates({"early_stopping_patience": 5, "reduce_lr_on_plateau": 0.1, "min_learning_rate": 1e-5},
                            model, [0.70, 0.69, 0.69, 0.69, 0.69])
    assert rates == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5, 1e-5])


def test_v2_defaults_are_the_reference_librarys():
    """docs/models.md "Training defaults (v2)": the config defaults a user gets without writing them."""
    from contract.config import TrainingConfig

    training = TrainingConfig()
    assert training.reduce_lr_on_plateau == 0.1 and training.early_stopping_patience == 2
    assert training.min_learning_rate == 1e-6 and training.gradient_clip_norm == 10.0
    assert training.shuffle_buffer_batches == 100 and training.shuffle_buffer_examples is None


def test_the_trainers_optimizer_clips_the_global_gradient_norm_when_asked():
    from models.trainer import make_optimizer

    assert make_optimizer({"learning_rate": 1e-3, "gradient_clip_norm": 10.0}).global_clipnorm == 10.0
    assert make_optimizer({"learning_rate": 1e-3, "gradient_clip_norm": None}).global_clipnorm is None


def test_the_shuffle_buffer_covers_a_hundred_batches_unless_given_in_examples():
    from models.trainer import shuffle_buffer_size

    assert shuffle_buffer_size({"shuffle_buffer_batches": 100, "shuffle_buffer_examples": None}, 4096) == 409_600
    assert shuffle_buffer_size({"shuffle_buffer_batches": 100, "shuffle_buffer_examples": 10_000}, 4096) == 10_000


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["dnn", "camn"])
def test_fit_traces_the_training_step_once_after_create_variables(architecture):
    """Variables created inside fit's first step make tf.function trace the step twice (create,
    then run without creating): a second compile of the whole training graph. The Trainer creates
    the model's and the optimizer's variables first; then fit traces once, and the first step
    leaves the variables where they were (no fresh ones appear)."""
    features, labels = h.random_batch(batch=16)
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(8)
    for prebuilt, traces in ((False, 2), (True, 1)):
        model = h.build(architecture, {"dropout": 0.0})
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
        if prebuilt:
            create_variables(model, data)
            before = {id(v) for v in model.variables + model.optimizer.variables}
        model.fit(data, epochs=1, verbose=0)
        assert model.train_function.experimental_get_tracing_count() == traces, prebuilt
    assert {id(v) for v in model.variables + model.optimizer.variables} == before
