"""tensorflow-transform: the ``preprocessing_fn`` (``preprocessing``) and the raw schema
(``schema``). Imports ``contract`` only."""
