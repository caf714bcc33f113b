"""The Cascade R-CNN model, built from small explicit modules."""

from detector.modeling.cascade_rcnn import CascadeRCNN

__all__ = ["CascadeRCNN"]
