"""Every model: the exported SavedModel gives the in-memory model's predictions through both
serving signatures (serialized raw tf.Examples and raw tensors), behind the real transform graph."""
import pytest

from models import registry
from tests import model_harness as h

pytestmark = pytest.mark.slow  # a transform analysis (Beam) and a SavedModel export per model


@pytest.mark.parametrize("name", registry.names())
def test_saved_model_round_trip(name, tmp_path):
    h.assert_export_roundtrip(name, tmp_dir=str(tmp_path))
