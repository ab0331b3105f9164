"""Paste Back Faces: the edited face crops back into their photos, through the inverse of the alignment."""
import logging

from revpers_core.faces import paste, pipeline

from . import _images
from .common import FACES, Progress, category

log = logging.getLogger("revpers")


class RevPersPasteBack:
    DESCRIPTION = (
        "Puts edited face crops back into their photos through the inverse of the alignment, blended with "
        "each crop's face mask feathered inwards, so there is no seam; several faces per photo, overlaps "
        "shared by weight. Pixels outside the masks are left exactly as they were. Faces too small for the "
        "model are covered with a flat fill; faces left on request are outlined and the photo carries a red "
        "banner; photos that Detect and Align passed through without a face get a red NOT ANONYMIZED frame "
        "and banner.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The photos that went into Detect and Align Faces."}),
                "crops": ("IMAGE", {"tooltip": "The edited (anonymized) crops, in face order; any square size."}),
                "faces": (FACES, {"tooltip": "From Detect and Align Faces."}),
                "feather": ("FLOAT", {
                    "default": paste.DEFAULT_FEATHER, "min": 0.0, "max": paste.MAX_FEATHER, "step": 0.005,
                    "tooltip": "Width of the soft edge inside the mask, as a fraction of the crop side "
                               "(0.05 = 51 px on a 1024 crop). 0 = hard edge."}),
            },
            "optional": {
                "masks": ("MASK", {"tooltip": "Replace the standard face masks (crop space, one per face "
                                              "or one for all). Default: the masks Detect and Align made."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("images", "coverage", "warning")
    OUTPUT_TOOLTIPS = (
        "The photos with the crops pasted back.",
        "How much of each pixel came from the crops (0 = untouched).",
        "Empty, or which photos were passed through unanonymized and why.",
    )
    FUNCTION = "paste"
    CATEGORY = category("Faces")

    def paste(self, images, crops, faces, feather, masks=None):
        batch = _images.image_batch(images, "images")
        crop_batch = _images.image_array(crops, "crops")
        outs, coverage, warning = pipeline.paste_back(
            batch, crop_batch, faces, masks=_images.mask_batch(masks, "masks"),
            feather=float(feather), on_step=Progress(len(batch)))
        if warning:
            log.warning("revpers: %s", warning.replace("\n", "; "))
        return (_images.to_image(outs), _images.to_mask(coverage), warning)


NODE_CLASS_MAPPINGS = {"RevPersPasteBack": RevPersPasteBack}
NODE_DISPLAY_NAME_MAPPINGS = {"RevPersPasteBack": "Paste Back Faces (RevPers)"}
