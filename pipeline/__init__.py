"""The TFX pipeline package: config, components, pipeline definition, runners, report, CLI."""

# Kubeflow (KFP v2) imports a custom artifact type by its type name, e.g. "pipeline.Quarantine";
# imported lazily so that `import pipeline` stays light.
_ARTIFACT_TYPES = ("Quarantine", "SequenceState")


def __getattr__(name):
    if name in _ARTIFACT_TYPES:
        from pipeline import components

        return getattr(components, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
