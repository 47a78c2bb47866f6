"""The training schedule: early stopping on validation AUC and the optional learning-rate cut on a plateau."""
import pytest
import tf_keras

from models.trainer import schedule_callbacks


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
