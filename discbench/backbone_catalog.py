"""What ``discbench list backbones`` prints, without importing torch: each built-in backbone's parameter count, its
modules and their FeatureSpecs, declared here for CIFAR-100 inputs (3x32x32, 100 classes).

The numbers are declared, not computed, so that listing stays instant; ``tests/test_table1_backbones.py`` builds
every registered backbone and checks them (and that every built-in is listed).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

REFERENCE_INPUT = "3x32x32, 100 classes"


@dataclass(frozen=True)
class BackboneInfo:
    """params: parameters with 100 classes on 3x32x32 inputs; specs: (channels, reduction) of modules 1..4;
    modules: where the four modules end."""

    params: int
    specs: tuple[tuple[int, int], ...]
    modules: str


_RESNET = "stem+layer1 | layer2 | layer3 | layer4"
_REPDISTILLER = "stem | layer1 | layer2 | layer3"

CATALOG: dict[str, BackboneInfo] = {
    "densenet121": BackboneInfo(7_048_676, ((256, 1), (512, 2), (1024, 4), (1024, 8)),
                                "stem+denseblock1 | transition1+denseblock2 | transition2+denseblock3 | "
                                "transition3+denseblock4+norm5"),
    "efficientnet_b0": BackboneInfo(4_135_648, ((40, 4), (112, 8), (320, 16), (1280, 16)),
                                    "features[0:4] | [4:6] | [6:8] | [8]"),
    "resnet18": BackboneInfo(11_220_132, ((64, 1), (128, 2), (256, 4), (512, 8)), _RESNET),
    "resnet34": BackboneInfo(21_328_292, ((64, 1), (128, 2), (256, 4), (512, 8)), _RESNET),
    "resnet50": BackboneInfo(23_705_252, ((256, 1), (512, 2), (1024, 4), (2048, 8)), _RESNET),
    "resnet101": BackboneInfo(42_697_380, ((256, 1), (512, 2), (1024, 4), (2048, 8)), _RESNET),
    "resnet152": BackboneInfo(58_341_028, ((256, 1), (512, 2), (1024, 4), (2048, 8)), _RESNET),
    "resnet20": BackboneInfo(278_324, ((16, 1), (16, 1), (32, 2), (64, 4)), _REPDISTILLER),
    "resnet32": BackboneInfo(472_756, ((16, 1), (16, 1), (32, 2), (64, 4)), _REPDISTILLER),
    "resnet56": BackboneInfo(861_620, ((16, 1), (16, 1), (32, 2), (64, 4)), _REPDISTILLER),
    "resnet110": BackboneInfo(1_736_564, ((16, 1), (16, 1), (32, 2), (64, 4)), _REPDISTILLER),
    "shufflenet_v1": BackboneInfo(949_258, ((24, 1), (240, 2), (480, 4), (960, 8)), _REPDISTILLER),
    "smallnet": BackboneInfo(320_436, ((16, 1), (32, 2), (64, 4), (128, 8)), "stem+block | block | block | block"),
    "tinynet": BackboneInfo(83_852, ((8, 2), (16, 4), (32, 8), (64, 16)), "stem+block | block | block | block"),
    "vgg19_bn": BackboneInfo(20_086_692, ((64, 2), (128, 4), (256, 8), (512, 16)),
                             "max-pool 1 | max-pool 2 | max-pool 3 | max-pool 4 (conv block 5 in the head)"),
    "wrn_40_2": BackboneInfo(2_255_156, ((16, 1), (32, 1), (64, 2), (128, 4)), "conv1 | block1 | block2 | block3"),
}


def listing() -> list[tuple[str, str]]:
    """(name, description) rows for ``discbench list backbones``, built-ins first, then the adapter prefixes."""
    rows = []
    for name, info in sorted(CATALOG.items()):
        specs = " ".join(f"{c}@{r}" for c, r in info.specs)
        rows.append((name, f"{info.params / 1e6:6.2f} M params, 4 modules: {specs}  ({info.modules})"))
    timm = ("installed" if importlib.util.find_spec("timm") is not None
            else "not installed: pip install 'discbench[timm]'")
    rows.append(("tv:NAME", "any torchvision classifier (torchvision.models.list_models()), cut at its stage "
                            "boundaries; specs from a probe forward"))
    rows.append(("timm:NAME", f"any timm model with features_only, cut at its feature_info modules (timm {timm})"))
    return rows
