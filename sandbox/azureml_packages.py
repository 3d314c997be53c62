"""The Azure ML SDK packages an environment names -> what the image can hold on Python 3.11.

azureml-core 1.61.0.post4 is the newest azureml-core on PyPI and the one every image holds; the
other SDK packages release in step with it (each needs ``azureml-core~=<its own version>``), so each
maps to its 1.61 release where that installs with it on Python 3.11, and is left out where it cannot.
Every decision below was checked with ``pip install --dry-run --only-binary=:all: --python-version 3.11``
for the images' manylinux platforms, next to ``azureml-core==1.61.0.post4``; each carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

#: The azureml-core of every image (newest on PyPI; a training run needs it, not azureml-defaults).
AZUREML_CORE_VERSION = "1.61.0.post4"
AZUREML_CORE = f"azureml-core=={AZUREML_CORE_VERSION}"
#: The SDK release that installs with that azureml-core.
SDK_RELEASE = "~=1.61.0"
#: Extras whose packages have no wheel (``fusepy`` is a source distribution): left out.
UNINSTALLABLE_EXTRAS = {"fuse": "fusepy, which it needs, has no wheel (source only) and the build installs wheels"}


@dataclass(frozen=True)
class SdkRule:
    """What an SDK package becomes: ``use`` (a specifier, or a whole requirement when ``rename``), or left out."""

    why: str
    use: str | None = None
    #: Versions of ``use`` known to install: a request that allows one of them is not a change.
    installs: tuple[str, ...] = ()
    #: ``use`` is a requirement of another package (azureml-defaults -> azureml-core).
    rename: bool = False
    keep: bool = False


_CORE = SdkRule("the azureml-core the image holds (training runs need only it; the newest on PyPI)",
                AZUREML_CORE, (AZUREML_CORE_VERSION,), rename=True)
_FAMILY = "the 1.61 release, which installs with azureml-core 1.61.0.post4 on Python 3.11"
_NO_AUTOML = ("left out: its 1.61 release needs azureml-automl-runtime, which needs psutil<5.9.4, "
              "and no such psutil has a wheel for Python 3.11")

#: Canonical SDK package name -> what the image gets instead, with the reason.
SDK_PACKAGES: dict[str, SdkRule] = {
    "azureml-core": _CORE,
    "azureml-defaults": SdkRule("azureml-core is what a training run needs of azureml-defaults (the rest is "
                                "the inferencing HTTP server)", AZUREML_CORE, (AZUREML_CORE_VERSION,), rename=True),
    "azureml-sdk": SdkRule("azureml-core is what a training run needs of the azureml-sdk bundle (its 1.61 release "
                           "needs azureml-dataset-runtime[fuse], which does not install)",
                           AZUREML_CORE, (AZUREML_CORE_VERSION,), rename=True),
    "azureml-mlflow": SdkRule("installs as given (1.62.0.post6 with mlflow-skinny<=3.15)", keep=True),
    "azureml-dataset-runtime": SdkRule(
        "1.62.0.post1 alone, 1.61.0 next to the SDK 1.61 packages that need ~=1.61.0 (pip picks)",
        ">=1.61.0,<1.63", ("1.61.0", "1.62.0", "1.62.0.post1")),
    "azureml-dataprep": SdkRule("5.5.0 alone, 5.4.5 next to azureml-dataset-runtime 1.61.0 (pip picks)",
                                ">=5.4.5,<5.6", ("5.4.5", "5.5.0")),
    **{name: SdkRule(_FAMILY, SDK_RELEASE, ("1.61.0",)) for name in (
        "azureml-train", "azureml-train-core", "azureml-train-restclients-hyperdrive", "azureml-telemetry",
        "azureml-widgets", "azureml-pipeline", "azureml-pipeline-core", "azureml-pipeline-steps",
        "azureml-train-automl-client", "azureml-automl-core", "azureml-interpret", "azureml-explain-model",
        "azureml-tensorboard", "azureml-accel-models", "azureml-responsibleai", "azureml-contrib-notebook",
        "azureml-contrib-pipeline-steps", "azureml-contrib-reinforcementlearning", "azureml-contrib-fairness",
        "azureml-contrib-server", "azureml-contrib-services", "azureml-contrib-functions", "azureml-contrib-mir",
    )},
    "azureml-train-automl": SdkRule(_NO_AUTOML),
    "azureml-train-automl-runtime": SdkRule(_NO_AUTOML),
    "azureml-automl-runtime": SdkRule("left out: needs psutil<5.9.4, and no such psutil has a wheel for Python 3.11"),
    "azureml-automl-dnn-nlp": SdkRule(_NO_AUTOML),
    "azureml-contrib-dataset": SdkRule("left out: needs azureml-dataset-runtime[fuse], and fusepy has no wheel"),
    "azureml-opendatasets": SdkRule("left out: needs pyspark, which has no wheel (source only)"),
    "azureml-datadrift": SdkRule("left out: needs pyspark, which has no wheel (source only)"),
    "azureml-contrib-interpret": SdkRule("left out: its newest release (1.23.0) needs azureml-interpret~=1.23.0, "
                                         "which conflicts with azureml-core 1.61 (its code is in azureml-interpret)"),
    "azureml-contrib-gbdt": SdkRule("left out: its newest release (1.29.0) needs azureml-core~=1.29.0"),
}


def sdk_package(requirement: Requirement) -> tuple[str | None, str, bool] | None:
    """An SDK package's requirement -> (what the image installs or None, why, changed), else None (not in the table).

    ``changed`` is False when the result is one of the versions the request already allows.
    """
    rule = SDK_PACKAGES.get(canonicalize_name(requirement.name))
    if rule is None or rule.keep:
        return None
    if rule.use is None:
        return None, rule.why, True
    asked = requirement.specifier
    allowed = not asked or any(asked.contains(version, prereleases=True) for version in rule.installs)
    if rule.rename:
        renamed = canonicalize_name(requirement.name) != canonicalize_name(Requirement(rule.use).name)
        return rule.use, rule.why, renamed or bool(requirement.extras) or not allowed
    extras = sorted(requirement.extras - UNINSTALLABLE_EXTRAS.keys())
    left_out = sorted(requirement.extras & UNINSTALLABLE_EXTRAS.keys())
    why = rule.why + "".join(f"; extra [{extra}] left out: {UNINSTALLABLE_EXTRAS[extra]}" for extra in left_out)
    specifier = (asked & SpecifierSet(rule.use)) if allowed else SpecifierSet(rule.use)
    extras_text = f"[{','.join(extras)}]" if extras else ""
    return f"{requirement.name}{extras_text}{specifier}", why, bool(left_out) or not allowed
