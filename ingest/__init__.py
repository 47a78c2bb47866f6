"""Log ingestion: reading interaction logs (``sources``, over ``log_files``, ``log_values``,
``timestamps`` and ``log_tables``), building the users' histories (``history``) and the examples
(``sequences``, the Beam SequenceExampleGen), and the synthetic logs (``synthetic``,
``click_model``). Imports ``contract`` only."""
