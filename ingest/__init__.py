"""Log ingestion: reading interaction logs (``sources``), building
the users' histories (``history``) and the examples (``sequences``, the Beam SequenceExampleGen),
and the synthetic logs (``synthetic``, ``click_model``). Imports ``contract`` only."""
