"""No probability of exactly 0 or 1 at any model's output (``models.base.probability``), even
when the logit saturates float32's sigmoid: TFMA's logloss of such a prediction is inf or nan."""
import pytest

from tests import model_harness as h

FINAL_BIASES = {  # the bias(es) of the layer(s) that make each model's logit (default params)
    "dnn": lambda model: [model.head.logit.bias],
    "din": lambda model: [model.head.logit.bias],
    "camn": lambda model: [model.head.logit.bias],
    "dumn": lambda model: [model.head.logit.bias],
    "fadidn": lambda model: [model.head.logit.bias],
    "tf4ctr": lambda model: [model.W_s.bias, model.W_c.bias],  # wsf: logit = w_s z_s + w_c z_c
}


def test_every_model_is_covered():
    from models import registry

    assert set(FINAL_BIASES) == set(registry.names())


@pytest.mark.parametrize("name", sorted(FINAL_BIASES))
def test_a_saturated_logit_gives_a_probability_inside_0_1(name):
    features, labels = h.random_batch(batch=16)
    h.assert_saturated_logit_stays_inside_0_1(h.build(name), features, labels, FINAL_BIASES[name])
