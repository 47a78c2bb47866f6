"""ctr-pipeline: a TFX pipeline for CTR prediction from user behaviour sequences."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_pins(name):
    """The top-level pins; the full lock (requirements/constraints-lock.txt) is applied by `make`."""
    with open(os.path.join(HERE, "requirements", name), encoding="utf-8") as handle:
        return [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]


setup(
    name="ctr-pipeline",
    version="0.1.0",
    description="TFX pipeline for click-through-rate prediction from user behaviour sequences",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["contract*", "pipeline*", "models*", "ingest*", "transforms*", "serving*"]),
    install_requires=read_pins("constraints-top.txt") + ["PyYAML>=6", "pydantic>=2,<3"],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["ctr-pipeline=pipeline.cli:main"]},
)
