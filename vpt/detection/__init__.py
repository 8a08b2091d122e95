"""Detection transfer: a frozen prompted ViT with a ViTDet simple feature pyramid inside torchvision's
FCOS / RetinaNet / Faster R-CNN; VOC and COCO data; COCO mAP through faster-coco-eval or pycocotools.
CNN backbones (timm models with ``feature_info``, pixel prompts only) go through an FPN instead.

Importing this package registers the ``detection`` model type, so ``vpt.from_pretrained`` can load
detection artifacts.
"""
from .cnn_pyramid import CNNFeaturePyramid
from .config import DetDataConfig, DetModelSection, DetectorConfig, PyramidConfig
from .data import AnnotationError, BoxStats, DetRecord, read_coco, read_split, read_voc
from .detectors import DETECTORS
from .model import PromptedDetector, create_detector, detection_backbone_config
from .pyramid import ViTFeaturePyramid

__all__ = ["AnnotationError", "BoxStats", "CNNFeaturePyramid", "DETECTORS", "DetDataConfig", "DetRecord", "DetModelSection",
           "DetectorConfig", "PromptedDetector", "PyramidConfig", "ViTFeaturePyramid",
           "create_detector", "detection_backbone_config", "read_coco", "read_split", "read_voc"]
