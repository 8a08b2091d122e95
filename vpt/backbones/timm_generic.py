"""Any other timm model (CNNs, hierarchical and relative-position transformers): pixel prompts only."""
from __future__ import annotations

from .base import BackboneAdapter, BackboneError, DataConfig
from .timm_vit import timm_data_config, timm_pretrained_cfg

_WHY = {
    "Beit": "it adds relative-position bias tables sized for its fixed token grid, so extra tokens have no valid bias",
    "SwinTransformer": "it is hierarchical: attention runs in local windows over a 2-D grid that merges between stages, "
                       "so there is no global token sequence to extend",
    "VisionTransformerRelPos": "its relative-position bias is sized for the fixed token grid",
    "VisionTransformerSAM": "it uses windowed attention with relative positions over a 2-D grid",
    "NaFlexVit": "its variable-resolution packed sequences are not supported yet",
}


def token_refusal_reason(model) -> str:
    cls = type(model).__name__
    for name, why in _WHY.items():
        if cls.startswith(name):
            return f"{cls} cannot take token prompts: {why}"
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        return f"{cls} is not a ViT-style token model (a CNN or hierarchical network has no token sequence to extend)"
    return f"{cls} is not a supported ViT-style token model (supported: timm VisionTransformer and Eva families)"


class TimmGenericAdapter(BackboneAdapter):
    library = "timm"

    def __init__(self, model, config, arch, tag):
        super().__init__(model, config, arch, tag)
        self.token_refusal = token_refusal_reason(model)
        self.num_features = int(getattr(model, "head_hidden_size", model.num_features))

    def data_config(self) -> DataConfig:
        return timm_data_config(self.model)

    def pretrained_cfg(self):
        return timm_pretrained_cfg(self)

    def forward_features(self, x):
        return self.model.forward_features(x)

    def pool(self, feats):
        return self.model.forward_head(feats, pre_logits=True)

    def unpooled_refusal(self):
        return None  # timm's forward_features: the unpooled (B, C, H, W) map

    def forward_intermediates(self, x, indices, stop_early: bool = True):
        """Feature maps (B, C_i, H/r_i, W/r_i) at ``feature_info`` positions ``indices`` (timm's own
        ``forward_intermediates``; a CNN's stage ends, e.g. strides 8, 16, 32 for a detector's FPN)."""
        if not hasattr(self.model, "forward_intermediates"):
            raise BackboneError(f"timm model {type(self.model).__name__} ('{self.config.name}') has no "
                                f"forward_intermediates; use a timm model that has one (EfficientNet, ResNet, ...)")
        return self.model.forward_intermediates(x, indices=list(indices), stop_early=stop_early,
                                                intermediates_only=True)
