"""Tiny random object-detection models built from configs (ResNet backbones from config, no pretrained weights)."""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("detr", "conditional_detr", "yolos", "deformable_detr", "rt_detr")
#: Checked against eager at run time (not on attnviz.verify.PROVEN_TYPES); RT-DETRv2 is refused.
OTHER_KINDS = ("dab-detr", "table-transformer", "rt_detr_v2")
#: resize small: the tiny models run in well under a second on one core
SIZE = {"shortest_edge": 64, "longest_edge": 96}


def _resnet(cls):
    return cls(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"])


def build(kind: str):
    """(config, image processor) of a tiny random detector of ``kind``."""
    import transformers as T

    common = dict(num_labels=3, id2label={0: "cat", 1: "dog", 2: "rocket"}, label2id={"cat": 0, "dog": 1, "rocket": 2})
    backbone = dict(backbone_config=_resnet(T.ResNetConfig), use_pretrained_backbone=False, use_timm_backbone=False)
    detr = dict(encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, **backbone, **common)
    if kind == "detr":
        return T.DetrConfig(d_model=16, **detr), T.DetrImageProcessor(size=SIZE)
    if kind == "conditional_detr":
        return T.ConditionalDetrConfig(d_model=16, **detr), T.ConditionalDetrImageProcessor(size=SIZE)
    if kind == "table-transformer":
        return T.TableTransformerConfig(d_model=16, **detr), T.DetrImageProcessor(size=SIZE)
    if kind == "dab-detr":
        return T.DabDetrConfig(hidden_size=16, **detr), T.ConditionalDetrImageProcessor(size=SIZE)
    if kind == "deformable_detr":
        return (T.DeformableDetrConfig(d_model=32, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, **detr),
                T.DeformableDetrImageProcessor(size=SIZE))
    if kind == "yolos":
        return (T.YolosConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                              image_size=[64, 96], patch_size=16, num_detection_tokens=5, **common),
                T.YolosImageProcessor(size=SIZE))
    if kind in ("rt_detr", "rt_detr_v2"):
        cls = T.RTDetrConfig if kind == "rt_detr" else T.RTDetrV2Config
        return (cls(backbone_config=_resnet(T.RTDetrResNetConfig), use_pretrained_backbone=False,
                               use_timm_backbone=False, d_model=16, encoder_hidden_dim=16, encoder_in_channels=[8, 16, 16],
                               encoder_ffn_dim=16, encoder_attention_heads=2, decoder_layers=2, decoder_attention_heads=2,
                               decoder_ffn_dim=16, num_queries=5, decoder_n_points=2, decoder_in_channels=[16, 16, 16],
                               **common),
                T.RTDetrImageProcessor(size={"height": 64, "width": 64}))
    raise ValueError(kind)


def make_detector(root: Path, kind: str, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` detector (safetensors) with its image processor into ``root/kind``."""
    import transformers as T

    folder = Path(root) / kind
    if (folder / "config.json").exists():
        return folder
    config, processor = build(kind)
    torch.manual_seed(seed)
    model = T.AutoModelForObjectDetection.from_config(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
