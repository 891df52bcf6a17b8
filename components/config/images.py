"""Image references: pinned (a tag or a digest, never `latest`), the CUDA variant a GPU group runs, and the CPU
architecture an official Ray image is built for."""

from __future__ import annotations

import re

from .values import config_error

# The official Ray images: tags without an accelerator suffix (or with `-cpu`) carry no CUDA; `-gpu` variants do.
_OFFICIAL_RAY_REPOSITORIES = frozenset({"rayproject/ray", "docker.io/rayproject/ray", "index.docker.io/rayproject/ray"})
_GPU_TAG = re.compile(r"-(gpu|cu[0-9]+)(-|$)")

ARM64_TAG_SUFFIX = "-aarch64"

# The well-known node label of a node's CPU architecture (amd64, arm64), set by the kubelet.
ARCHITECTURE_LABEL = "kubernetes.io/arch"


def require_image(key: str, value: object, example: str = "rayproject/ray:2.60.0") -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise config_error(key, value, f"it must be a non-empty image reference such as {example}")
    if value.count("@") > 1:
        raise config_error(key, value, "it must name at most one digest (name[:tag][@sha256:<digest>])")
    if "@" not in value and not _image_tag(value):
        raise config_error(key, value, "it must name a tag or a digest (rayproject/ray:<version>), not imply latest")
    if _image_tag(value) == "latest":
        raise config_error(key, value, "it must pin a version: `latest` changes under a running cluster")
    return value


def _image_tag(image: str) -> str:
    return image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]


def _official_ray_tag(image: str) -> str | None:
    """The tag of an official Ray image (`rayproject/ray:<tag>`, with a digest after it or not; empty for a digest
    alone); None for any other image."""
    tag = _image_tag(image)
    repository = image.split("@", 1)[0].removesuffix(f":{tag}")
    return tag if repository in _OFFICIAL_RAY_REPOSITORIES else None


def image_architecture(image: str) -> str | None:
    """The CPU architecture (as nodes label it, `kubernetes.io/arch`) an official Ray image is built for, read from
    its tag: Ray's image CI builds each architecture apart and appends `-aarch64` to the tags of the arm64 builds,
    nothing to the amd64 ones (ray-project/ray ci/ray_ci/ray_image.py, `arch_suffix`). Whether a tag without the
    suffix is amd64 alone or an index of both, amd64 nodes run it; arm64 nodes run the `-aarch64` tag for sure.
    None for any other image (its builder knows) and for an official image named by its digest alone."""
    tag = _official_ray_tag(image)
    if not tag:
        return None
    return "arm64" if tag.endswith(ARM64_TAG_SUFFIX) else "amd64"


def gpu_image(key: str, image: str) -> str:
    """The image a GPU group runs when it names none: the `-gpu` variant of an official Ray image's tag
    (`2.60.0` and `2.60.0-cpu` -> `2.60.0-gpu`; a `-gpu` or `-cu<NNN>` tag as it is). A custom image is used as it
    is (whether it carries CUDA is its builder's to know). A digest names one image only, and no GPU variant of
    an `-aarch64` tag is known, so for those the group needs its own `image`."""
    tag = _official_ray_tag(image)
    if tag is None or _GPU_TAG.search(tag):
        return image
    repository = image.split("@", 1)[0].removesuffix(f":{tag}")
    if "@" in image or tag.endswith(ARM64_TAG_SUFFIX):
        why = "is pinned by digest" if "@" in image else f"is an {ARM64_TAG_SUFFIX} image"
        raise config_error(
            key,
            "",
            f"the cluster's image {image!r} {why}, and a GPU group needs an image with CUDA whose reference "
            "cannot be derived from it: set this group's image (e.g. rayproject/ray:<version>-gpu@sha256:<digest>)",
        )
    return f"{repository}:{tag.removesuffix('-cpu')}-gpu"


def group_image(key: str, value: object, cluster_image: str, gpus: int) -> str:
    """The group's own image if given, else the cluster's (its -gpu variant for a group with GPUs)."""
    if value != "":
        return require_image(key, value)
    return gpu_image(key, cluster_image) if gpus else cluster_image
