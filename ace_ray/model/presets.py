"""The paper's model variants as presets: named sets of config overrides on one model, not forks.

A preset is applied under the user's own settings (``key=value`` on the command line wins, and so does a key
the workload file sets, unless the command line chose another preset than the file's), so an ablation is a
preset plus a switch. Table 1 rows: twinbert, fashionbert, cebert, acebert; Table 3 (image
input): patch, roi_patch, roi_patch_pixel; Table 4 (fine-tuning additions): none, hot_query, adversarial.
"""

from __future__ import annotations

from pathlib import Path

from ace_ray.config import ConfigError, Workload, flatten, load_workload, load_yaml

_IMAGE = {
    "grid": ["data.features.roi=false", "model.patches=true", "model.pixels=false"],
    "roi": ["data.features.roi=true", "model.patches=true", "model.pixels=false"],
    "roi_pixels": ["data.features.roi=true", "model.patches=true", "model.pixels=true"],
}
_PLAIN = ["finetune.hot_queries=false", "finetune.adversarial.mode=none"]
_HOT = ["finetune.hot_queries=true", "finetune.adversarial.mode=none"]
_ACE = ["finetune.hot_queries=true", "finetune.adversarial.mode=alternating"]

PRESETS: dict[str, list[str]] = {
    # Table 1
    "twinbert": ["model.patches=false", "model.pixels=false", *_PLAIN],  # text only: query vs title
    # whole-image grid patches; its pretraining weights the losses adaptively, as FashionBERT does
    "fashionbert": [*_IMAGE["grid"], *_PLAIN, "pretrain.adaptive=true"],
    "cebert": [*_IMAGE["roi_pixels"], *_PLAIN],
    "acebert": [*_IMAGE["roi_pixels"], *_ACE],
    # Table 3: which image input (no hot query, no adversarial)
    "patch": [*_IMAGE["grid"], *_PLAIN, "pretrain.adaptive=true"],  # = fashionbert
    "roi_patch": [*_IMAGE["roi"], *_PLAIN],
    "roi_patch_pixel": [*_IMAGE["roi_pixels"], *_PLAIN],
    # Table 4: what fine-tuning adds on top of CE-BERT
    "none": [*_IMAGE["roi_pixels"], *_PLAIN],
    "hot_query": [*_IMAGE["roi_pixels"], *_HOT],
    "adversarial": [*_IMAGE["roi_pixels"], *_ACE],
}


def preset_overrides(name: str) -> list[str]:
    """The overrides of preset ``name``; a clear error listing the presets otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"finetune.preset: unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


def load_with_preset(path: str | Path | None, overrides: list[str], preset: str | None = None) -> Workload:
    """The workload with a preset applied beneath ``overrides``: the preset named by ``preset``, else by
    ``finetune.preset`` in the file or the overrides. The keys the file sets win over its own preset (a file is a
    whole: a sweep's ``best.yaml`` names its preset and the settings found beside it); a preset the command line
    chooses instead of the file's wins over the file."""
    name = preset or load_workload(path, overrides).finetune.preset
    under = preset_overrides(name)
    if path and name == load_workload(path).finetune.preset:
        written = flatten(load_yaml(path))
        under = [o for o in under if o.split("=", 1)[0] not in written]
    return load_workload(path, [*under, f"finetune.preset={name}", *overrides])
