"""The TFX pipeline package: config, components, pipeline definition, runners, report, CLI."""


def __getattr__(name):
    # Kubeflow (KFP v2) imports the custom artifact type by its type name, "pipeline.Quarantine";
    # imported lazily so that `import pipeline` stays light.
    if name == "Quarantine":
        from pipeline.components import Quarantine

        return Quarantine
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
