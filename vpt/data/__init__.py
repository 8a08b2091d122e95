"""Data: image folders and CSVs, stratified / few-shot splits, albumentations training transforms and
evaluation preprocessing taken from the backbone's own DataConfig."""
from .dataset import CorruptImageError, ImageDataset, collate, load_image, sample_seed
from .images import IMAGE_EXTENSIONS, collect_images, is_image
from .folder import DataError, DataSplits, class_mismatch_message, load_splits, read_csv, scan_class_folders
from .splits import few_shot, stratified_split
from .transforms import EvalTransform, TrainTransform, build_transforms

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "is_image", "CorruptImageError", "ImageDataset", "collate", "load_image", "sample_seed", "DataError", "DataSplits",
           "class_mismatch_message", "load_splits", "read_csv", "scan_class_folders", "few_shot",
           "stratified_split", "EvalTransform", "TrainTransform", "build_transforms"]
