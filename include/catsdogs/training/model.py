"""The CNN: architecture factory, THE evaluation transform and the training augmentation.

THE evaluation transform is `square_pixels` (geometry, here) then `normalize` (arithmetic,
`catsdogs.inference.scorer`, which runs every forward pass), so a picture is preprocessed the
same way in train (val/test), evaluate and the Bento service. Stage modules import this module
inside their functions (it imports torch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from catsdogs.inference.scorer import normalize

ARCHES: tuple[str, ...] = ("resnet18", "mobilenet_v2")
# ImageNet-1k class indices (torchvision's order): domestic cats (tabby, tiger cat, Persian,
# Siamese, Egyptian cat) and dogs (Chihuahua .. Mexican hairless: the 118 breeds)
IMAGENET_CATS = range(281, 286)
IMAGENET_DOGS = range(151, 269)


def build_model(arch: str = "resnet18", weights: str = "imagenet", num_classes: int = 2,
                freeze_backbone: bool = False, head_init: str = "random") -> torch.nn.Module:
    """A torchvision `arch` with its classifier head replaced by `num_classes` outputs.

    `weights`: "imagenet" (torchvision's weights, from the $TORCH_HOME cache or downloaded),
    "none" (random init) or a path to a state-dict file for the full network (either the
    ImageNet 1000-class network or this 2-class one). `freeze_backbone` trains only the head.
    `head_init`: "random" (torchvision's initialisation) or "imagenet_prior"
    (`imagenet_prior_head`; needs ImageNet weights and the two classes (cat, dog)); a UserError
    otherwise.
    """
    from catsdogs.training.weights import backbone_weights, load_state_dict_file

    if arch not in ARCHES:
        from catsdogs.errors import UserError

        raise UserError(f"model.arch={arch!r} is not supported; use one of {', '.join(ARCHES)}")
    import torchvision

    factory = getattr(torchvision.models, arch)
    net = factory(weights=backbone_weights(arch, weights))
    state = load_state_dict_file(weights) if weights not in ("imagenet", "none") else None
    if state is not None and _head_outputs(state) != num_classes:
        net.load_state_dict(state)
        state = None
    if freeze_backbone:
        for parameter in net.parameters():
            parameter.requires_grad = False
    imagenet_head = _head(net, arch)
    _replace_head(net, arch, num_classes)
    if state is not None:
        net.load_state_dict(state)
    if head_init == "imagenet_prior":
        if weights == "none" or state is not None or num_classes != 2:
            from catsdogs.errors import UserError

            raise UserError("train.head_init=imagenet_prior needs the ImageNet 1000-class head "
                            f"and 2 classes (model.weights={weights!r}, {num_classes} classes); "
                            "use model.weights=imagenet or train.head_init=random")
        prior = imagenet_prior_head(imagenet_head)
        new_head = _head(net, arch)
        with torch.no_grad():
            new_head.weight.copy_(prior.weight)
            new_head.bias.copy_(prior.bias)
    return net


def _head(net: torch.nn.Module, arch: str) -> torch.nn.Linear:
    """The network's last (classifier) layer."""
    return net.fc if arch == "resnet18" else net.classifier[-1]


def imagenet_prior_head(imagenet: torch.nn.Linear) -> torch.nn.Linear:
    """A 2-way (cat, dog) layer from the ImageNet 1000-way one (D -> 1000): row 0 (and bias) the
    mean of the cat class rows, row 1 the mean of the dog class rows, so that its logits start
    as the mean ImageNet logit over the cat classes and over the dog classes (D -> 2)."""
    if imagenet.out_features != 1000:
        raise ValueError(f"expected the ImageNet 1000-way layer, got {imagenet.out_features} outputs")
    layer = torch.nn.Linear(imagenet.in_features, 2)
    with torch.no_grad():
        for row, classes in enumerate((IMAGENET_CATS, IMAGENET_DOGS)):
            picked = list(classes)
            layer.weight[row] = imagenet.weight[picked].mean(0)
            layer.bias[row] = imagenet.bias[picked].mean()
    return layer


def _head_outputs(state: dict[str, torch.Tensor]) -> int:
    """Number of classes a state dict's last layer predicts."""
    last_bias = [key for key in state if key.endswith(".bias")][-1]
    return int(state[last_bias].shape[0])


def _replace_head(net: torch.nn.Module, arch: str, num_classes: int) -> None:
    if arch == "resnet18":
        net.fc = torch.nn.Linear(net.fc.in_features, num_classes)
    else:
        last = net.classifier[-1]
        net.classifier[-1] = torch.nn.Linear(last.in_features, num_classes)


def square_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """The geometric half of the evaluation transform for an already decoded picture: RGB and
    `catsdogs.data.images.square` (the transform stage's resize, so a presized picture passes
    unchanged), as an H,W,3 uint8 array: the pixels `catsdogs.data.images.square_image` gives the
    service for the same file. `normalize` is the other half."""
    from catsdogs.data.images import square, to_rgb

    return np.array(square(to_rgb(image), image_size))


def eval_resize(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """`square_pixels` as a 3,H,W uint8 tensor (for datasets; picklable for loader workers)."""
    return functools.partial(_square_chw, image_size=image_size)


def _square_chw(image: Image.Image, image_size: int) -> torch.Tensor:
    return torch.from_numpy(square_pixels(image, image_size)).permute(2, 0, 1).contiguous()


def eval_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """THE evaluation transform: `eval_resize` then `normalize` (float32 3,H,W)."""
    from torchvision import transforms

    return transforms.Compose([eval_resize(image_size), normalize])


def train_augment(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The `full` recipe's augmentation on one uint8 3,S,S picture (torchvision transforms v2):
    random resized crop (scale 0.6-1.0) and horizontal flip. The crop zooms in by 1.12x on
    average while evaluation sees the whole squashed frame (see docs/training.md, bias)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
                       v2.RandomHorizontalFlip()])


def train_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """`train_augment` for a PIL picture, then normalisation (float32 3,S,S)."""
    from torchvision.transforms import v2

    from catsdogs.data.images import to_rgb

    return v2.Compose([to_rgb, v2.PILToTensor(), train_augment(image_size), normalize])
