"""The component package's provider: serves RayCluster to Pulumi programs in any language.

The Pulumi CLI runs it as `python provider/` from a clone of the whole repository, so the component is imported
from the repository's `components/`, the same code a stack of this project runs (and the same `Pulumi.yaml`
defaults). Its schema is inferred from `RayCluster` and `RayClusterArgs` by Pulumi's analyzer.
"""

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# The release: consumers pin it as the git tag `v<VERSION>` (`pulumi package add <url>/provider@v<VERSION>`). For a
# git source the CLI takes the version from the tag, whatever this says: a test checks that every tag agrees.
VERSION = "0.1.0"
# The schema's namespace, which names every generated SDK (`@pulumi/ray-cluster`, `pulumi_ray_cluster`,
# `Pulumi.RayCluster`). Without one, the CLI names a package added from git after the repository's owner
# (`@<owner>/ray-cluster`), and one added from a clone as here: set, both get the same names, the README's. It is
# the namespace the CLI assumes for a package that sets none; the SDK is generated into the consumer's project, never
# published under it.
NAMESPACE = "pulumi"


OLDEST_PYTHON = (3, 11)


def main() -> None:
    if sys.version_info < OLDEST_PYTHON:
        # What the CLI shows the consumer, instead of an ImportError from deep inside the component.
        sys.exit(
            f"ray-cluster's component package needs Python {'.'.join(map(str, OLDEST_PYTHON))} or newer; "
            f"the Pulumi CLI started it with Python {sys.version.split()[0]} ({sys.executable})"
        )
    sys.path.insert(0, str(REPOSITORY))
    from pulumi.provider.experimental import component_provider_host

    from components import RayCluster
    from components.config.values import PROJECT

    component_provider_host(components=[RayCluster], name=PROJECT, namespace=NAMESPACE, version=VERSION)


if __name__ == "__main__":
    main()
