"""The Cascade R-CNN model, built by ``build_detector`` from small modules that take plain arguments."""

from detector.modeling.build import build_detector
from detector.modeling.cascade_rcnn import CascadeRCNN

__all__ = ["CascadeRCNN", "build_detector"]
