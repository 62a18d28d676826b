"""Detection operators in plain PyTorch with torchvision's signatures and semantics (no compiled extensions):
NMS, RoIAlign, box overlaps and the R-CNN box coder."""
from .boxes import (
    DeltaXYWHBBoxCoder, bbox2roi, box_area, box_iou, clip_boxes_to_image, elementwise_box_iou,
    elementwise_generalized_box_iou, generalized_box_iou, remove_small_boxes, roi2bbox,
)
from .nms import batched_nms, nms
from .roi_align import RoIAlign, roi_align

__all__ = [
    "nms", "batched_nms", "roi_align", "RoIAlign", "box_area", "box_iou", "generalized_box_iou",
    "elementwise_box_iou", "elementwise_generalized_box_iou", "clip_boxes_to_image", "remove_small_boxes",
    "bbox2roi", "roi2bbox", "DeltaXYWHBBoxCoder",
]
